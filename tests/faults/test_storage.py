"""Faults of the image path: instances_path runs out of space in the middle of a build's
download, and the image server drops the connection mid-download.  Each build fails with
a clear error and leaves nothing (no partial download, no folder, no domain); once the
cause is gone the same build succeeds."""

import os
import subprocess
import unittest

import vntest
from vntest import ENV, HARNESS, RUN


def in_host(*argv):
    subprocess.run(["bash", HARNESS, "ns", RUN, "a"] + list(argv), check=True)


class StorageFaults(vntest.AgentTestCase):
    def assert_nothing_left(self, a, u):
        self.assertNotIn(u, vntest.domain_uuids("a"))
        self.assertFalse(os.path.exists(a.instance_dir(u)))
        base = os.path.join(a.instances, "_base")
        left = [f for f in os.listdir(base) if f.endswith((".part", ".lock"))] \
            if os.path.isdir(base) else []
        self.assertEqual(left, [])

    def test_instances_path_full_mid_download(self):
        small = os.path.join(RUN, "small-instances")
        os.makedirs(small, exist_ok=True)
        size_kib = os.path.getsize(ENV["GUEST_IMAGE"]) // 1024 // 2
        in_host("mount", "-t", "tmpfs", "-o", "size=%dk,mode=0711" % size_kib, "tmpfs", small)
        try:
            a = self.agent("a", extra={"instances_path": small + "/inst"}).start()
            args = vntest.build_args("full-1", image_id="full-image")
            u = args["instance"]["uuid"]
            with self.assertRaises(self.rpc.om.RemoteError) as e:
                self.rpc.call("host-a", "build_and_run_instance", timeout=300, **args)
            self.assertIn("No space left", str(e.exception))
            self.assert_nothing_left(a, u)
            a.stop()
        finally:
            in_host("umount", small)
        # with room again the same image builds
        a2 = self.agent("a", extra={"instances_path": small + "/inst"}).start()
        args = vntest.build_args("full-2", image_id="full-image")
        r = self.rpc.call("host-a", "build_and_run_instance", timeout=300, **args)
        self.assertEqual(r["vm_state"], "active")
        self.rpc.call("host-a", "terminate_instance", timeout=300,
                      instance_uuid=args["instance"]["uuid"])
        a2.stop()

    def test_image_server_drops_mid_download(self):
        a = self.agent("a").start()
        url, sha, size = vntest.publish_image()
        broken = (ENV["IMAGE_URL"] + "/truncate/guest.qcow2", sha, size)
        args = vntest.build_args("dropped-1", image=broken, image_id="dropped-image")
        u = args["instance"]["uuid"]
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call("host-a", "build_and_run_instance", timeout=300, **args)
        self.assertIn("truncate/guest.qcow2", str(e.exception))
        self.assert_nothing_left(a, u)
        # tried again (transient), within the download's limits
        self.assertGreaterEqual(vntest.image_requests().get("/truncate/guest.qcow2", 0), 2)
        self.rpc.call("host-a", "terminate_instance", timeout=300, instance_uuid=u)


if __name__ == "__main__":
    unittest.main()
