"""The guest lifecycle on a real libvirtd host with real TCG guests: build from a message,
power operations that change the real guest, delete, sVirt labels, one download for many
builds, failed builds that leave nothing, and a kill -9 in the middle of builds."""

import os
import re
import subprocess
import threading
import time
import unittest
import uuid as uuidlib

import libvirt

import vntest
from vntest import ENV, RUN


class Lifecycle(vntest.AgentTestCase):
    def call(self, method, **kw):
        return self.rpc.call("host-a", method, timeout=300, **kw)

    def dom_state(self, u):
        c = vntest.virt("a")
        try:
            return c.lookupByUUIDString(u).state()[0]
        except libvirt.libvirtError:
            return None
        finally:
            c.close()

    def boot(self, a, name, **kw):
        args = vntest.build_args(name, **kw)
        r = self.call("build_and_run_instance", **args)
        self.assertEqual(r["vm_state"], "active", r)
        u = args["instance"]["uuid"]
        vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in a.console(u), 60, what="boot marker")
        return u

    def test_build_power_operations_delete(self):
        a = self.agent("a").start()
        # the call of the compute issue, as written there (with this run's image server)
        url, sha, size = vntest.publish_image()
        u = "0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01"
        args = {"instance": {"uuid": u, "name": "vm-1", "project_id": "p1", "user_id": "u1",
                             "flavor": {"name": "m1.tiny", "vcpus": 1, "memory_mb": 128,
                                        "root_gb": 1, "ephemeral_gb": 0, "swap_mb": 0,
                                        "extra_specs": {}},
                             "image": {"id": "guest-1", "url": url, "sha256": sha,
                                       "disk_format": "qcow2", "size": size},
                             "metadata": {}},
                "networks": [], "block_device_mapping": []}
        r = self.call("build_and_run_instance", **args)
        self.assertEqual((r["vm_state"], r["task_state"], r["power_state"]), ("active", None, 1))
        self.assertIsNotNone(r["launched_at"])
        self.assertEqual(self.dom_state(u), libvirt.VIR_DOMAIN_RUNNING)
        vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in a.console(u), 60, what="marker")
        got = self.call("get_instance", instance_uuid=u)
        for k in ("uuid", "name", "host", "vm_state", "task_state", "power_state", "launched_at"):
            self.assertIn(k, got)
        self.assertEqual(got["host"], "host-a")

        r = self.call("stop_instance", instance_uuid=u)
        self.assertEqual((r["vm_state"], r["power_state"]), ("stopped", 4))
        self.assertEqual(self.dom_state(u), libvirt.VIR_DOMAIN_SHUTOFF)
        self.assertIn("VIRTNODE-GUEST-POWEROFF", a.console(u))  # it powered itself off
        r = self.call("start_instance", instance_uuid=u)
        self.assertEqual(r["vm_state"], "active")
        self.assertEqual(self.dom_state(u), libvirt.VIR_DOMAIN_RUNNING)
        vntest.wait_for(lambda: a.console(u).count("VIRTNODE-GUEST-BOOTED") == 2, 60,
                        what="boot after start")

        r = self.call("reboot_instance", instance_uuid=u, reboot_type="SOFT")
        self.assertEqual(r["vm_state"], "active")
        vntest.wait_for(lambda: a.console(u).count("VIRTNODE-GUEST-BOOTED") == 3, 60,
                        what="boot after soft reboot")
        self.assertEqual(a.console(u).count("VIRTNODE-GUEST-POWEROFF"), 2)
        r = self.call("reboot_instance", instance_uuid=u, reboot_type="HARD")
        vntest.wait_for(lambda: a.console(u).count("VIRTNODE-GUEST-BOOTED") == 4, 60,
                        what="boot after hard reboot")
        # a hard reboot does not ask the guest
        self.assertEqual(a.console(u).count("VIRTNODE-GUEST-POWEROFF"), 2)

        r = self.call("pause_instance", instance_uuid=u)
        self.assertEqual((r["vm_state"], r["power_state"]), ("paused", 3))
        self.assertEqual(self.dom_state(u), libvirt.VIR_DOMAIN_PAUSED)
        beats = len(re.findall("HEARTBEAT", a.console(u)))
        time.sleep(2.5)
        self.assertEqual(len(re.findall("HEARTBEAT", a.console(u))), beats, "paused guest runs")
        r = self.call("unpause_instance", instance_uuid=u)
        self.assertEqual(r["vm_state"], "active")
        vntest.wait_for(lambda: len(re.findall("HEARTBEAT", a.console(u))) > beats + 1, 10,
                        what="heartbeats after unpause")

        r = self.call("suspend_instance", instance_uuid=u)
        self.assertEqual((r["vm_state"], r["power_state"]), ("suspended", 4))
        self.assertEqual(self.dom_state(u), libvirt.VIR_DOMAIN_SHUTOFF)
        c = vntest.virt("a")
        self.assertTrue(c.lookupByUUIDString(u).hasManagedSaveImage())
        c.close()
        r = self.call("resume_instance", instance_uuid=u)
        self.assertEqual(r["vm_state"], "active")
        self.assertEqual(self.dom_state(u), libvirt.VIR_DOMAIN_RUNNING)
        # the guest resumed where it was: no new boot
        time.sleep(2)
        self.assertEqual(a.console(u).count("VIRTNODE-GUEST-BOOTED"), 4)

        out = self.call("get_console_output", instance_uuid=u, tail_length=3)
        self.assertEqual(len(out.strip().splitlines()), 3)
        self.assertIn("VIRTNODE-HEARTBEAT", out)

        idir = a.instance_dir(u)
        self.assertTrue(os.path.exists(os.path.join(idir, "disk")))
        r = self.call("terminate_instance", instance_uuid=u)
        self.assertEqual(r["vm_state"], "deleted")
        self.assertNotIn(u, vntest.domain_uuids("a"))
        self.assertFalse(os.path.exists(idir), "instance folder left behind")
        # again: still fine
        self.call("terminate_instance", instance_uuid=u)

    def test_labels_unique_and_not_root(self):
        a = self.agent("a").start()
        u1 = self.boot(a, "label-1")
        u2 = self.boot(a, "label-2")
        r1 = self.call("get_instance", instance_uuid=u1)
        r2 = self.call("get_instance", instance_uuid=u2)
        self.assertTrue(r1["security_label"])
        self.assertNotEqual(r1["security_label"], r2["security_label"])
        for u, r in ((u1, r1), (u2, r2)):
            uid = vntest.qemu_uid(u)
            self.assertIsNotNone(uid)
            self.assertNotEqual(uid, 0, "QEMU runs as root")
            self.assertIn("dac:+%d:+%d" % (uid, uid), r["security_label"])
        # the shared cached image keeps its owner: no guest may write it
        base = os.path.join(a.instances, "_base")
        for f in os.listdir(base):
            if len(f) == 40:
                st = os.stat(os.path.join(base, f))
                self.assertEqual((st.st_uid, oct(st.st_mode & 0o777)), (0, "0o644"))
        for u in (u1, u2):
            self.call("terminate_instance", instance_uuid=u)

    def test_ten_builds_one_download(self):
        # ten 1-vCPU guests on this 2-CPU host need a ratio above the default 4.0
        a = self.agent("a", extra={"cpu_allocation_ratio": "8"}).start()
        img = vntest.publish_image("shared-once.qcow2")
        image_id = "shared-once-%s" % uuidlib.uuid4().hex  # not in the cache yet
        vntest.reset_image_requests()
        results = []

        def build(i):
            try:
                args = vntest.build_args("many-%d" % i, image=img, image_id=image_id)
                results.append(self.rpc.call("host-a", "build_and_run_instance", timeout=600,
                                             **args))
            except Exception as e:  # noqa: BLE001 - reported below
                results.append(e)
        threads = [threading.Thread(target=build, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [r for r in results if isinstance(r, dict) and r["vm_state"] == "active"]
        self.assertEqual(len(ok), 10, results)
        self.assertEqual(vntest.image_requests().get("/shared-once.qcow2"), 1)
        for r in ok:
            self.call("terminate_instance", instance_uuid=r["uuid"])

    def assert_nothing_left(self, a, u):
        self.assertNotIn(u, vntest.domain_uuids("a"))
        self.assertFalse(os.path.exists(a.instance_dir(u)))

    def test_failed_builds_leave_nothing(self):
        a = self.agent("a", extra={"image_cache.max_image_size_gb": "1"}).start()
        url, sha, size = vntest.publish_image()
        evil_path = os.path.join(RUN, "images", "evil.qcow2")
        if not os.path.exists(evil_path):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                            "/etc/shadow", evil_path, "64M"], check=True)
        huge_path = os.path.join(RUN, "images", "huge.raw")
        with open(huge_path, "wb") as f:
            f.truncate(2 << 30)
        cases = [
            ("bad-sum", (url, "0" * 64, size), "ImageChecksumMismatch"),
            ("no-server", ("http://127.0.0.1:1/guest.qcow2", sha, size), "ImageDownloadFailed"),
            ("evil", vntest.publish_image("evil.qcow2"), "ImageUnacceptable"),
            ("huge", (ENV["IMAGE_URL"] + "/huge.raw", "1" * 64, 0), "ImageTooLarge"),
        ]
        for name, img, fault in cases:
            args = vntest.build_args(name, image=img, image_id="img-" + name)
            u = args["instance"]["uuid"]
            with self.assertRaises(self.rpc.om.RemoteError) as e:
                self.call("build_and_run_instance", **args)
            self.assertEqual(e.exception.exc_type, "BuildAbortException", name)
            self.assertIn("rolled back", str(e.exception))
            got = self.call("get_instance", instance_uuid=u)
            self.assertEqual(got["vm_state"], "error")
            self.assertEqual(got["fault"]["class"], fault, got["fault"])
            self.assert_nothing_left(a, u)
            # a failed instance is deleted like any other
            self.assertEqual(self.call("terminate_instance", instance_uuid=u)["vm_state"], "deleted")
        os.unlink(huge_path)

    def test_kill9_during_builds(self):
        """kill -9 while three builds download: after the restart no domain or disk is
        left, each build is failed and its caller gets the failure."""
        a = self.agent("a").start()
        url, sha, size = vntest.publish_image("slow.qcow2")
        slow = (ENV["IMAGE_URL"] + "/slow/1024/slow.qcow2", sha, size)
        outcomes = {}

        def build(i):
            args = vntest.build_args("killed-%d" % i, image=slow, image_id="slow-%d" % i)
            u = args["instance"]["uuid"]
            try:
                outcomes[u] = self.rpc.call("host-a", "build_and_run_instance", timeout=240,
                                            **args)
            except Exception as e:  # noqa: BLE001
                outcomes[u] = e
        threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(4)
        a.kill9()
        a.start()
        for t in threads:
            t.join(240)
        self.assertEqual(len(outcomes), 3)
        for u, out in outcomes.items():
            self.assertIsInstance(out, self.rpc.om.RemoteError, out)
            self.assertEqual(out.exc_type, "OperationInterrupted")
            got = self.call("get_instance", instance_uuid=u)
            self.assertEqual(got["vm_state"], "error")
            self.assert_nothing_left(a, u)
            rows = vntest.db_query("SELECT vm_state FROM instances WHERE uuid = %s", u)
            vntest.wait_for(lambda: vntest.db_query(
                "SELECT vm_state FROM instances WHERE uuid = %s", u) == [("error",)], 20,
                what="error state in the database")
            self.call("terminate_instance", instance_uuid=u)
        # no partial download survives either
        base = os.path.join(a.instances, "_base")
        self.assertFalse([f for f in os.listdir(base) if f.endswith(".part")])


if __name__ == "__main__":
    unittest.main()
