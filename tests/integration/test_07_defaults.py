"""The shipped defaults, as an operator gets them: an agent given only its broker and
database (state_path and instances_path at /var/lib/virtnode, private to the test host's
mount namespace) boots a confined guest, and the guest's files are its own: another
identity can neither open its disk nor list the instances."""

import os
import stat
import subprocess
import unittest

import vntest
from vntest import HARNESS, RUN


def in_host(hostkey, *argv):
    """Runs @argv inside libvirt host @hostkey's namespaces; returns (status, output)."""
    p = subprocess.run(["bash", HARNESS, "ns", RUN, hostkey] + list(argv),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return p.returncode, p.stdout.decode(errors="replace")


def as_user(hostkey, uid, *argv):
    return in_host(hostkey, "setpriv", "--reuid=%d" % uid, "--regid=%d" % uid,
                   "--clear-groups", "--", *argv)


class Defaults(vntest.AgentTestCase):
    def test_default_paths_boot_and_guest_files_are_private(self):
        a = self.agent("a", default_paths=True).start()
        args = vntest.build_args("defaults-1")
        u = args["instance"]["uuid"]
        r = self.rpc.call("host-a", "build_and_run_instance", timeout=300, **args)
        self.assertEqual(r["vm_state"], "active", r)
        vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in a.console(u), 60,
                        what="boot marker with the default paths")
        guest = vntest.qemu_uid(u)
        self.assertIsNotNone(guest)
        self.assertNotEqual(guest, 0, "QEMU runs as root")
        # confined beyond its identity: QEMU's seccomp sandbox, verified by the agent
        labels = self.rpc.call("host-a", "get_instance", instance_uuid=u)["security_label"]
        self.assertIn("seccomp:filter", labels)
        with open("/proc/%d/status" % vntest.qemu_pid(u)) as f:
            self.assertIn("Seccomp:\t2", f.read())

        inst = "/var/lib/virtnode/instances"
        disk = "%s/%s/disk" % (inst, u)
        # modes and owners, read where the agent and libvirt see them
        top = os.stat(a.state)
        self.assertEqual(stat.S_IMODE(top.st_mode), 0o711)
        self.assertEqual(stat.S_IMODE(os.stat(a.instances).st_mode), 0o711)
        d = os.stat(a.instance_dir(u))
        self.assertEqual(stat.S_IMODE(d.st_mode), 0o750)
        self.assertEqual(d.st_gid, guest)
        f = os.stat(os.path.join(a.instance_dir(u), "disk"))
        self.assertEqual(stat.S_IMODE(f.st_mode), 0o600)
        self.assertEqual(f.st_uid, guest)
        cache = os.path.join(a.instances, "_base")
        self.assertEqual(stat.S_IMODE(os.stat(cache).st_mode), 0o755)
        for name in os.listdir(cache):
            if not name.endswith(".info"):
                self.assertEqual(stat.S_IMODE(os.stat(os.path.join(cache, name)).st_mode),
                                 0o644, name)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(a.state, "journal.db")).st_mode),
                         0o600)

        # the guest's own identity reads its disk (the path is open to it) ...
        rc, out = as_user("a", guest, "head", "-c", "4", disk)
        self.assertEqual(rc, 0, out)
        # ... another guest's identity and nobody do not, nor list the instances
        for other in (guest + 1, 65534):
            rc, out = as_user("a", other, "head", "-c", "4", disk)
            self.assertNotEqual(rc, 0, "uid %d read the disk" % other)
            self.assertIn("Permission denied", out)
            rc, out = as_user("a", other, "ls", inst)
            self.assertNotEqual(rc, 0, "uid %d listed the instances" % other)
            rc, out = as_user("a", other, "ls", os.path.dirname(disk))
            self.assertNotEqual(rc, 0, "uid %d listed the guest's folder" % other)

        self.rpc.call("host-a", "terminate_instance", timeout=300, instance_uuid=u)
        self.assertFalse(os.path.exists(a.instance_dir(u)))


if __name__ == "__main__":
    unittest.main()
