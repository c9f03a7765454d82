"""Fleet deployment: the Ansible role deploys an agent on this machine (localhost, the
"direct" service manager since there is no systemd here), the agent answers; a second run
changes nothing; a changed option restarts the agent with it; a bad option is refused
before it reaches the host and leaves the running agent alone.  The Debian package holds
the daemon, the CLI, the systemd unit and the example configuration."""

import json
import os
import re
import shutil
import subprocess
import unittest

import vntest
from vntest import Rpc

ANSIBLE = os.path.join(vntest.SRC, "deploy", "ansible")


class Deploy(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.join(vntest.RUN, "agents", "ansible-%d" % os.getpid())
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.host = "deployed-1"
        self.api = vntest.free_port()
        self.vars = {
            "virtnode_host": self.host,
            "virtnode_install": "none",
            "virtnode_bin": os.path.join(vntest.BIN, "virtnoded"),
            "virtnode_service_manager": "direct",
            "virtnode_config_dir": os.path.join(self.dir, "etc"),
            "virtnode_state_path": os.path.join(self.dir, "state"),
            "virtnode_log_file": os.path.join(self.dir, "log", "virtnoded.log"),
            "virtnode_transport_urls": [vntest.ENV["AMQP_URL"]],
            "virtnode_db_connection": vntest.ENV["PG_DSN"],
            "virtnode_db_password": "not-needed-by-trust-auth",
            "virtnode_libvirt_uri": vntest.ENV["HOST_A_URI"],
            # the harness's libvirtd, not this machine's (test_15_fleet: the role's own)
            "virtnode_manage_libvirt": False,
            "virtnode_virt_type": "qemu",
            "virtnode_api_listen": "127.0.0.1:%d" % self.api,
            "virtnode_options": {"DEFAULT": {"instances_path": os.path.join(self.dir, "inst")}},
        }
        with open(os.path.join(self.dir, "inventory.ini"), "w") as f:
            f.write("[compute]\nlocalhost ansible_connection=local\n")
        self.rpc = Rpc()

    def tearDown(self):
        self.rpc.close()
        subprocess.run(["start-stop-daemon", "--stop", "--quiet", "--oknodo", "--retry",
                        "TERM/30/KILL/5", "--pidfile", self.pidfile()])

    def pidfile(self):
        return os.path.join(self.vars["virtnode_state_path"], "virtnoded.pid")

    def pid(self):
        with open(self.pidfile()) as f:
            return int(f.read())

    def play(self, expect_ok=True, extra=()):
        path = os.path.join(self.dir, "vars.json")
        with open(path, "w") as f:
            json.dump(self.vars, f)
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ANSIBLE, "ansible.cfg"),
                   ANSIBLE_LOCAL_TEMP=os.path.join(self.dir, "tmp"), ANSIBLE_NOCOLOR="1")
        r = subprocess.run(
            ["ansible-playbook", "-i", os.path.join(self.dir, "inventory.ini"),
             "-e", "@" + path, "-e", "ansible_become=false"] + list(extra) +
            [os.path.join(ANSIBLE, "site.yml")],
            cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=600)
        if expect_ok:
            self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-2000:])
        else:
            self.assertNotEqual(r.returncode, 0, r.stdout[-3000:])
        recap = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+"
                          r"failed=(\d+)", r.stdout)
        self.assertIsNotNone(recap, r.stdout[-3000:])
        return int(recap.group(2)), r.stdout

    def test_role(self):
        changed, _ = self.play()
        self.assertGreater(changed, 0)
        pid = self.pid()
        self.assertEqual(self.rpc.call(self.host, "ping", arg=1)["host"], self.host)
        conf = os.path.join(self.vars["virtnode_config_dir"], "virtnode.conf")
        with open(conf) as f:
            text = f.read()
        self.assertIn("host = %s" % self.host, text)
        self.assertNotIn(self.vars["virtnode_db_password"], text)
        pw = os.path.join(self.vars["virtnode_config_dir"], "db-password")
        self.assertEqual(os.stat(pw).st_mode & 0o777, 0o600)
        # the heartbeat reaches the central database
        vntest.wait_for(lambda: vntest.db_query(
            "SELECT 1 FROM services WHERE host = %s", self.host), 30, what="the heartbeat")

        # idempotent: nothing changes, the agent keeps running
        changed, _ = self.play()
        self.assertEqual(changed, 0)
        self.assertEqual(self.pid(), pid)

        # --check --diff of a changed option: passes, changes nothing, shows no secret
        self.vars["virtnode_options"]["DEFAULT"]["report_interval"] = 7
        secret = vntest.ENV["AMQP_URL"].split("//", 1)[1].split("@", 1)[0].split(":", 1)[-1]
        changed, out = self.play(extra=["--check", "--diff"])
        self.assertGreater(changed, 0, "check mode sees the configuration change")
        with open(conf) as f:
            self.assertNotIn("report_interval = 7", f.read())
        self.assertEqual(self.pid(), pid)
        self.assertNotIn(":%s@" % secret, out, "--diff shows the broker password")
        self.assertNotIn(self.vars["virtnode_db_password"], out)
        del self.vars["virtnode_options"]["DEFAULT"]["report_interval"]

        # a changed option reaches the agent through a restart
        self.vars["virtnode_options"]["DEFAULT"]["report_interval"] = 5
        changed, _ = self.play()
        self.assertGreater(changed, 0)
        self.assertNotEqual(self.pid(), pid)
        with open(conf) as f:
            self.assertIn("report_interval = 5", f.read())
        self.assertEqual(self.rpc.call(self.host, "ping", arg=2)["arg"], 2)
        pid = self.pid()

        # a bad value never reaches the host
        self.vars["virtnode_options"]["libvirt"] = {"virt_type_typo": "kvm"}
        _, out = self.play(expect_ok=False)
        self.assertIn("virt_type_typo", out)
        with open(conf) as f:
            self.assertNotIn("virt_type_typo", f.read())
        self.assertEqual(self.pid(), pid)
        os.kill(pid, 0)

    def test_debian_package(self):
        deb, ddeb = vntest.build_package(os.path.join(self.dir, "pkg"))
        debs, ddebs = [deb], [ddeb]
        files = subprocess.run(["dpkg-deb", "-c", debs[0]], check=True, capture_output=True,
                               text=True).stdout
        for path in ("./usr/bin/virtnoded", "./usr/bin/virtnodectl",
                     "./lib/systemd/system/virtnoded.service", "./etc/virtnode/virtnode.conf",
                     "./usr/share/doc/virtnode/virtnode.conf.example",
                     "./usr/share/doc/virtnode/copyright", "./usr/share/doc/virtnode/changelog.gz",
                     "./usr/share/man/man8/virtnoded.8.gz", "./usr/share/man/man1/virtnodectl.1.gz",
                     "./usr/share/man/man5/virtnode.conf.5.gz"):
            self.assertIn(path, files)
        # stripped, hardened binaries; their symbols in the dbgsym package, by build id
        root = os.path.join(self.dir, "extracted")
        subprocess.run(["dpkg-deb", "-x", debs[0], root], check=True)
        dbg = subprocess.run(["dpkg-deb", "-c", ddebs[0]], check=True, capture_output=True,
                             text=True).stdout
        for b in ("virtnoded", "virtnodectl"):
            path = os.path.join(root, "usr", "bin", b)
            elf = subprocess.run(["readelf", "-S", "-n", "-d", "-l", path], check=True,
                                 capture_output=True, text=True).stdout
            self.assertFalse(".debug_info" in elf, "%s is not stripped" % b)
            self.assertTrue("GNU_RELRO" in elf and re.search(r"Flags: NOW PIE", elf),
                            "%s: no relro, bind-now or PIE" % b)
            syms = subprocess.run(["objdump", "-T", path], check=True, capture_output=True,
                                  text=True).stdout
            self.assertIn("__stack_chk_fail", syms)
            self.assertTrue(re.search(r"GLIBC\S*\)\s+__\w+_chk\b", syms), "%s: not fortified" % b)
            bid = re.search(r"Build ID: ([0-9a-f]+)", elf).group(1)
            self.assertIn("./usr/lib/debug/.build-id/%s/%s.debug" % (bid[:2], bid[2:]), dbg)
        # Debian's rules: lintian reports no error and no warning, for both packages
        lint = subprocess.run(["lintian", "--tag-display-limit", "0", debs[0], ddebs[0]],
                              capture_output=True, text=True)
        tags = [l for l in lint.stdout.splitlines() if l[:2] in ("E:", "W:")]
        self.assertEqual(tags, [], lint.stdout)
        info = subprocess.run(["dpkg-deb", "-I", debs[0]], check=True, capture_output=True,
                              text=True).stdout
        self.assertRegex(info, r"Depends:.*libvirt0")
        self.assertRegex(info, r"Depends:.*librabbitmq4")
        self.assertIn("conffiles", info)
        # systemd's own check of the packaged unit, with the packaged binaries in /usr/bin
        # (an overlay in a mount namespace of its own: nothing is installed here)
        ub = os.path.join(self.dir, "usr-bin")
        os.makedirs(ub)
        verify = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             "mount -t overlay vn -o lowerdir=%s:/usr/bin %s && mount --bind %s /usr/bin && "
             "systemd-analyze verify %s" % (os.path.join(root, "usr", "bin"), ub, ub,
                                            os.path.join(root, "lib/systemd/system/"
                                                         "virtnoded.service"))],
            capture_output=True, text=True)
        self.assertEqual((verify.returncode, verify.stdout + verify.stderr), (0, ""))
        # the unit's hardening, scored by systemd itself (no systemd runs here: offline)
        unit = os.path.join(vntest.SRC, "deploy", "systemd", "virtnoded.service")
        sec = subprocess.run(["systemd-analyze", "security", "--offline=true", unit],
                             capture_output=True, text=True)
        score = re.search(r"Overall exposure level for virtnoded.service: ([0-9.]+)", sec.stdout)
        self.assertIsNotNone(score, sec.stdout + sec.stderr)
        self.assertLess(float(score.group(1)), 5.0, sec.stdout)


    def test_package_install_upgrade_purge(self):
        """In a test root (dpkg --root): the package installs with its conffile and the unit
        enabled, a newer build upgrades it keeping the operator's configuration, and purge
        removes the configuration and the unit's links but never /var/lib/virtnode."""
        old, _ = vntest.build_package(os.path.join(self.dir, "pkg"))
        version = vntest.package_version(old)
        new, _ = vntest.build_package(os.path.join(self.dir, "pkg2"), version + ".1")
        root = os.path.join(self.dir, "root")
        for d in ("var/lib/dpkg/updates", "var/lib/dpkg/info"):
            os.makedirs(os.path.join(root, d))
        open(os.path.join(root, "var/lib/dpkg/status"), "w").close()

        def dpkg(*args):
            r = subprocess.run(["dpkg", "--root=" + root, "--force-depends",
                                "--force-script-chrootless"] + list(args),
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

        def installed():
            r = subprocess.run(["dpkg-query", "--root=" + root, "-W", "-f=${Version} ${Status}",
                                "virtnode"], capture_output=True, text=True)
            return r.stdout

        conf = os.path.join(root, "etc/virtnode/virtnode.conf")
        wants = os.path.join(root, "etc/systemd/system/multi-user.target.wants/virtnoded.service")
        dpkg("-i", old)
        self.assertEqual(installed(), "%s install ok installed" % version)
        self.assertEqual(os.stat(conf).st_mode & 0o777, 0o640)
        self.assertTrue(os.path.islink(wants), "the unit is enabled")
        self.assertEqual(os.stat(os.path.join(root, "var/lib/virtnode")).st_mode & 0o777, 0o711)
        with open(conf, "a") as f:
            f.write("# the operator's own line\n")
        dpkg("-i", new)
        self.assertEqual(installed(), "%s.1 install ok installed" % version)
        with open(conf) as f:
            self.assertIn("# the operator's own line", f.read(), "the conffile was replaced")
        dpkg("--purge", "virtnode")
        self.assertNotIn("installed", installed())
        self.assertFalse(os.path.exists(os.path.join(root, "etc/virtnode")))
        self.assertFalse(os.path.lexists(wants))
        self.assertFalse(os.path.exists(os.path.join(root, "usr/bin/virtnoded")))
        self.assertTrue(os.path.isdir(os.path.join(root, "var/lib/virtnode")),
                        "purge keeps the guests' disks")


if __name__ == "__main__":
    unittest.main()
