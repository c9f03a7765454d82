"""Foundation: the test guest boots under TCG through libvirt; the daemon's configuration
checks, SIGTERM and SIGHUP behave as documented."""

import os
import socket
import re
import subprocess
import time
import unittest

import vntest
from vntest import ENV, RUN, BIN


class GuestImage(unittest.TestCase):
    def test_guest_boots_and_prints_heartbeats(self):
        """The whole-disk image boots under TCG via libvirt host a, prints its marker, then
        a heartbeat line every second."""
        d = os.path.join(RUN, "foundation")
        os.makedirs(d, exist_ok=True)
        disk = os.path.join(d, "disk.qcow2")
        console = os.path.join(d, "console.log")
        for p in (disk, console):
            if os.path.exists(p):
                os.unlink(p)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        ENV["GUEST_IMAGE"], disk], check=True)
        xml = """<domain type='qemu'><name>vn-foundation</name><memory unit='MiB'>128</memory>
          <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
          <features><acpi/></features><devices>
          <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
            <source file='%s'/><target dev='vda' bus='virtio'/></disk>
          <serial type='file'><source path='%s'/></serial></devices></domain>""" % (disk, console)
        conn = vntest.virt("a")
        dom = conn.createXML(xml, 0)
        try:
            t0 = time.monotonic()

            def text():
                try:
                    with open(console, errors="replace") as f:
                        return f.read()
                except OSError:
                    return ""
            vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in text(), 60, what="boot marker")
            booted = time.monotonic() - t0
            vntest.wait_for(lambda: len(re.findall(r"VIRTNODE-HEARTBEAT \d+", text())) >= 3, 20,
                            what="three heartbeats")
            self.assertLess(booted, 30, "booting took %.1f s" % booted)
        finally:
            dom.destroy()
            conn.close()


class Daemon(vntest.AgentTestCase):
    def run_bin(self, *args):
        return subprocess.run([os.path.join(BIN, "virtnoded")] + list(args),
                              capture_output=True, text=True)

    def test_check_config_errors_exit_2(self):
        path = os.path.join(RUN, "bad.conf")
        with open(path, "w") as f:
            f.write("[DEFAULT]\nreport_interval = soon\n[amqp]\nbogus_key = 1\n"
                    "[database]\npassword_file = /nonexistent/pgpass\n")
        r = self.run_bin("--config", path, "--check-config")
        self.assertEqual(r.returncode, 2)
        self.assertIn("%s: [DEFAULT] report_interval: 'soon' is not an integer" % path, r.stderr)
        self.assertIn("%s: [amqp] bogus_key: unknown option" % path, r.stderr)
        self.assertIn("%s: [database] password_file: '/nonexistent/pgpass' cannot be read: "
                      "No such file or directory" % path, r.stderr)
        good = vntest.Agent("a")
        r = self.run_bin("--config", good.conf, "--check-config")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_dump_config_lists_every_key(self):
        r = self.run_bin("--dump-config")
        self.assertEqual(r.returncode, 0)
        ref = self.run_bin("--config-reference").stdout
        keys = re.findall(r"^\| `([a-z_]+)` \|", ref, re.M)
        self.assertGreater(len(keys), 60)
        for k in keys:
            self.assertRegex(r.stdout, r"\n%s = " % k)
        self.assertRegex(r.stdout, r"# default: ")

    def test_sigterm_exits_0_and_leaves_nothing(self):
        a = self.agent("a").start()
        pid = a.daemon_pid()
        self.assertIsNotNone(pid)
        self.assertEqual(a.stop(), 0)
        self.assertFalse(os.path.exists("/proc/%d" % pid), "virtnoded still running")
        self.assertIn("stopped", a.log_text())

    def test_sighup_reloads(self):
        """SIGHUP applies the reloadable options (asserted by their effect: the capacity row
        and the log level) and keeps the running value of the others (a build after the
        reload still uses the old instances_path, and its delete removes it)."""
        a = self.agent("a", extra={"log_level": "info"}).start()

        def reserved():
            r = vntest.db_query("SELECT reserved_host_memory_mb FROM compute_nodes "
                                "WHERE host = 'host-a'")
            return r[0][0] if r else None
        vntest.wait_for(lambda: reserved() is not None, 20, what="capacity row")
        self.assertNotEqual(reserved(), 1024)
        moved = os.path.join(a.dir, "moved-instances")
        with open(a.conf) as f:
            text = f.read()
        with open(a.conf, "w") as f:
            f.write(text.replace("log_level = info", "log_level = debug")
                    .replace("instances_path = %s" % a.instances, "instances_path = %s" % moved)
                    .replace("[DEFAULT]\n", "[DEFAULT]\nreserved_host_memory_mb = 1024\n"))
        os.kill(a.daemon_pid(), 1)
        vntest.wait_for(lambda: "configuration reloaded" in a.log_text(), 10, what="reload")
        vntest.wait_for(lambda: reserved() == 1024, 10, what="the reserved memory applied")
        self.assertIn("[DEFAULT] instances_path changed; the running value stays",
                      a.log_text())
        before = a.log_text().count(" DEBUG ")
        # instances_path kept its running value: a guest lands there, and its delete
        # removes it (it reported success while removing nothing when the value moved)
        args = vntest.build_args("reload-1")
        u = args["instance"]["uuid"]
        self.assertEqual(self.rpc.call("host-a", "build_and_run_instance", timeout=300,
                                       **args)["vm_state"], "active")
        self.assertTrue(os.path.exists(os.path.join(a.instances, u, "disk")))
        self.assertFalse(os.path.exists(os.path.join(moved, u)))
        # debug lines appear now: the new log level is in effect
        self.assertGreater(a.log_text().count(" DEBUG "), before)
        self.rpc.call("host-a", "terminate_instance", timeout=300, instance_uuid=u)
        self.assertFalse(os.path.exists(os.path.join(a.instances, u)))
        # a broken file is refused and the running configuration stays
        with open(a.conf, "a") as f:
            f.write("[nonsense]\nx = 1\n")
        os.kill(a.daemon_pid(), 1)
        vntest.wait_for(lambda: "reload refused" in a.log_text(), 10, what="refusal")
        self.assertTrue(a.ready())

    def test_systemd_notifications(self):
        """READY=1 once serving, WATCHDOG=1 every half WatchdogSec, STOPPING=1 on SIGTERM,
        as systemd's notify protocol sees them on NOTIFY_SOCKET."""
        a = self.agent("a")
        path = os.path.join(a.dir, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(60)
        got = []

        def until(word):
            while not any(word in m for m in got):
                got.append(sock.recv(4096).decode())
        try:
            a.start(wait=False, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
            until("READY=1")
            # ready means serving: /readyz agrees (within the status server's round trip)
            vntest.wait_for(a.ready, 2, interval=0.05, what="/readyz after READY=1")
            t0 = time.monotonic()
            n = sum("WATCHDOG=1" in m for m in got)
            while sum("WATCHDOG=1" in m for m in got) < n + 3:
                got.append(sock.recv(4096).decode())
            # three pings at one per second (half of the 2 s watchdog)
            self.assertLess(time.monotonic() - t0, 4.5)
            a.proc.send_signal(15)
            until("STOPPING=1")
            self.assertEqual(a.proc.wait(60), 0)
        finally:
            sock.close()


if __name__ == "__main__":
    unittest.main()
