"""The agent's kernel-facing code where this machine's kernel cannot run it: inside a TCG
test VM booted from Debian's cloud kernel (tests/vm).  vn-vmtest, built from storage/ and
network/, runs there as PID 1's child against real servers in host "na"'s namespace:

- open-iscsi + dm-multipath: two LUNs of one target (CHAP) on two portals; the map has two
  paths, I/O goes on when one portal goes away, the second volume keeps the sessions while
  the first detaches, and the last detach leaves no map, path or session;
- the kernel NFS client: one mount shared by two volumes, unmounted with the last;
- 802.1Q: a VLAN network's sub-interface and bridge made by network/, its frames captured
  tagged on the host side.

Addresses exist only inside na's namespace (10.77.0.0/24, 10.78.0.0/24, 10.79.0.0/24)."""

import os
import re
import subprocess
import time
import unittest

import vntest

VID = 100


class KernelVm(vntest.AgentTestCase):
    @classmethod
    def setUpClass(cls):
        vntest.start_nethost("na")
        vntest.harness("storage-start", "na")
        vntest.ENV.update(vntest._load_env())

    @classmethod
    def tearDownClass(cls):
        vntest.harness("storage-stop", "na")
        vntest.stop_nethost("na")

    def fabric(self):
        """Two storage networks and a VLAN trunk inside na; the target on both."""
        for br, addr in (("vmbr0", "10.77.0.1/24"), ("vmbr1", "10.78.0.1/24"), ("vmbr2", None)):
            vntest.in_host("na", "ip", "link", "add", br, "type", "bridge", check=True)
            if addr:
                vntest.in_host("na", "ip", "addr", "add", addr, "dev", br, check=True)
            vntest.in_host("na", "ip", "link", "set", br, "up", check=True)
        for portal in ("10.77.0.1:3260", "10.78.0.1:3260"):
            subprocess.run(["tgtadm", "--lld", "iscsi", "--op", "new", "--mode", "portal",
                            "--param", "portal=" + portal], check=True)

    def test_kernel_iscsi_multipath_nfs_and_vlan(self):
        run = os.path.join(vntest.RUN, "vm")
        os.makedirs(run, exist_ok=True)
        initrd = os.path.join(run, "vmtest.img")
        kernel = subprocess.run(["bash", os.path.join(vntest.SRC, "tests", "vm", "build.sh"),
                                 os.path.join(vntest.BIN, "vn-vmtest"), initrd],
                                check=True, stdout=subprocess.PIPE).stdout.decode().strip()
        self.fabric()
        console = os.path.join(run, "console.log")
        if os.path.exists(console):
            os.unlink(console)
        for lun in (1, 2):
            with open(os.path.join(vntest.ENV["STORAGE_LUN_DIR"], "lun%d.img" % lun), "r+b") as f:
                f.write(b"\0" * 4096)
        cmdline = ("console=ttyS0 net.ifnames=0 rdinit=/vmtest-init.sh vm_p1=10.77.0.1 "
                   "vm_p2=10.78.0.1 vm_a1=10.77.0.21/24 vm_a2=10.78.0.21/24 vm_iqn=%s "
                   "vm_user=%s vm_pass=%s vm_vid=%d vm_vaddr=10.79.0.21/24 vm_vpeer=10.79.0.1"
                   % (vntest.ENV["STORAGE_IQN"], vntest.ENV["STORAGE_CHAP_USER"],
                      vntest.ENV["STORAGE_CHAP_PASSWORD"], VID))
        nics = "".join(
            "<interface type='bridge'><mac address='52:54:00:7%d:00:21'/><source bridge='%s'/>"
            "<target dev='vmtap%d'/><model type='virtio'/></interface>" % (i, br, i)
            for i, br in enumerate(("vmbr0", "vmbr1", "vmbr2")))
        xml = ("<domain type='qemu'><name>vn-kernel-vm</name><memory unit='MiB'>768</memory>"
               "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>"
               "<kernel>%s</kernel><initrd>%s</initrd><cmdline>%s</cmdline></os>"
               "<features><acpi/></features><cpu mode='custom' match='exact'>"
               "<model fallback='allow'>qemu64</model></cpu><on_poweroff>destroy</on_poweroff>"
               "<on_reboot>destroy</on_reboot><on_crash>destroy</on_crash><devices>%s"
               "<serial type='file'><source path='%s'/></serial><memballoon model='none'/>"
               "</devices></domain>" % (kernel, initrd, cmdline, nics, console))
        capture = subprocess.Popen(
            ["bash", vntest.HARNESS, "ns", vntest.RUN, "na", "/usr/bin/python3",
             os.path.join(vntest.SRC, "tests", "vm", "capture_vlan.py"), "vmtap2", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        conn = vntest.virt("na")
        t0 = time.monotonic()
        dom = conn.createXML(xml, 0)
        def finished():
            try:
                return not dom.isActive()
            except vntest.libvirt.libvirtError:
                return True  # a transient domain is gone once it powered off
        try:
            vntest.wait_for(finished, 600, interval=1, what="the kernel test VM to finish")
        except AssertionError:
            dom.destroy()
            raise
        finally:
            out = capture.communicate(timeout=60)[0].decode(errors="replace")
        took = time.monotonic() - t0
        text = open(console, errors="replace").read()
        lines = [l.strip() for l in text.splitlines() if l.startswith("VMTEST")]
        report = "\n".join(lines)
        for mode in ("iscsi", "nfs", "vlan"):
            self.assertIn("VMTEST %s PASS" % mode, report, "%s failed in the VM:\n%s"
                          % (mode, report or text[-3000:]))
        m = re.search(r"TAGGED (.*)", out)
        tagged = dict(kv.split("=") for kv in (m.group(1).split() if m else []))
        self.assertGreater(int(tagged.get(str(VID), 0)), 0,
                           "no frame tagged %d left the VM: %s" % (VID, out))
        self.assertEqual(set(tagged), {str(VID)}, "frames with another tag: %s" % tagged)
        print("kernel VM (%.0f s):\n%s\nframes tagged %d seen on the host: %s"
              % (took, report, VID, tagged[str(VID)]))


if __name__ == "__main__":
    unittest.main()
