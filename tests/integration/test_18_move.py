"""Moving and recovering guests between two real libvirtd hosts: rebuild on the same host
(a new root disk from a new image, the guest's uuid kept; a failed rebuild leaves the guest
as it was), evacuation of a dead host's guest with and without shared instance storage
(fenced: the running guest's disk lease is held by its host's virtlockd, and a second QEMU
of the same disk is refused on either host; the dead host, back, removes its stale copy
and starts nothing), and snapshots of a running guest
uploaded by HTTP PUT that boot as new guests with what the first guest wrote.

The guests write a marker on their root disk at boot (vn.rootmark): ROOT-READ shows a disk
that was kept or copied, ROOT-WROTE one made anew."""

import hashlib
import json
import os
import re
import subprocess
import time
import unittest
import urllib.request

import libvirt

import vntest

MARK = {"vn.rootmark": "1"}
WROTE = re.compile(r"VIRTNODE-ROOT-WROTE (VNROOT-[0-9a-f-]+)")
READ = re.compile(r"VIRTNODE-ROOT-READ (VNROOT-[0-9a-f-]+)")
V = "1.4"


def wait_console(agent, uuid, pattern, timeout=180, after=0):
    """The first match of @pattern in the console of @uuid past offset @after."""
    def seen():
        m = pattern.search(agent.console(uuid), after)
        return m.group(1) if m else None
    return vntest.wait_for(seen, timeout, what="%s on the console of %s" % (pattern.pattern, uuid))


def lease_holder(path):
    """The pid holding the lockd lease of disk @path: virtlockd's POSIX lock on its first
    byte (QEMU's own image locks sit on other bytes), from /proc/locks; None if none."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        for line in f:
            w = line.split()
            # "1: POSIX  ADVISORY  WRITE 1234 00:2a:5678 0 0"
            if len(w) >= 8 and w[1] == "POSIX" and int(w[5].split(":")[2]) == ino and \
                    w[6] == "0" and w[7] == "0":
                return int(w[4])
    return None


def virtlockd_pid(hostkey):
    with open(os.path.join(vntest.RUN, "hosts", hostkey, "run", "virtlockd.pid")) as f:
        return int(f.read().strip())


def second_image():
    """The test guest published again under another name (a new image id, same bytes)."""
    return vntest.publish_image("guest-v2.qcow2")


def image_ref(image_id, image):
    url, sha, size = image
    return {"id": image_id, "url": url, "sha256": sha, "disk_format": "qcow2", "size": size}


class Move(vntest.AgentTestCase):
    def tearDown(self):
        # a host a test crashed comes back for the tests after it
        if not os.path.exists(os.path.join(vntest.RUN, "hosts", "a", "pid")):
            vntest.harness("host-start", "a")
        super().tearDown()

    def db_host(self, uuid):
        rows = vntest.db_query("SELECT host, vm_state, task_state FROM instances WHERE uuid = %s",
                               uuid)
        return tuple(rows[0]) if rows else None

    # ------------------------------------------------------------------ rebuild

    def test_rebuild_same_host(self):
        a = self.agent("a").start()
        args = vntest.build_args("rebuild-me", metadata=MARK)
        u = args["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        first = wait_console(a, u, WROTE)

        # a rebuild whose image is not what it claims fails before the guest is touched
        bad = image_ref("guest-bad", second_image())
        bad["sha256"] = "0" * 64
        boots = a.console(u).count("VIRTNODE-GUEST-BOOTED")
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "rebuild_instance", version=V, timeout=300, instance_uuid=u,
                          image=bad)
        self.assertIn("as it was", str(e.exception))
        r = self.rpc.call(a.host, "get_instance", instance_uuid=u)
        self.assertEqual((r["vm_state"], r["task_state"], r["power_state"]), ("active", None, 1))
        self.assertEqual(r["image"]["id"], "guest-1")
        self.assertEqual(a.console(u).count("VIRTNODE-GUEST-BOOTED"), boots,
                         "the failed rebuild restarted the guest")
        self.assertFalse(os.path.exists(os.path.join(a.instance_dir(u), "disk.rebuild")))

        # the real one: a new root disk from the new image, same domain uuid
        mark = len(a.console(u))
        r = self.rpc.call(a.host, "rebuild_instance", version=V, timeout=300, instance_uuid=u,
                          image=image_ref("guest-2", second_image()))
        self.assertEqual((r["vm_state"], r["task_state"], r["image"]["id"]),
                         ("active", None, "guest-2"))
        second = wait_console(a, u, WROTE, after=mark)
        self.assertNotEqual(first, second, "the root disk was not made anew")
        self.assertNotIn("VIRTNODE-ROOT-READ", a.console(u)[mark:])
        self.assertEqual(vntest.domain_uuids("a"), [u])
        with open(os.path.join(a.instance_dir(u), "disk.backing")) as f:
            backing = f.read().strip()
        info = json.loads(subprocess.check_output(
            ["qemu-img", "info", "-U", "--output=json", os.path.join(a.instance_dir(u), "disk")]))
        self.assertEqual(info["backing-filename"], backing)
        with open(backing, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), second_image()[1])
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)
        print("rebuild: a failed rebuild left the guest running untouched; the rebuild made "
              "a new root disk (marker %s -> %s) from image guest-2, same uuid" %
              (first[-12:], second[-12:]))

    # ------------------------------------------------------------------ evacuate

    def evacuate_args(self, build):
        return dict(build, instance_uuid=build["instance"]["uuid"], recreate=True)

    def test_evacuate_shared_storage_fenced(self):
        a = self.agent("a").start()
        b = self.agent("b").start()
        args = vntest.build_args("evacuee", metadata=MARK)
        u = args["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        first = wait_console(a, u, WROTE)
        vntest.wait_for(lambda: (self.db_host(u) or ())[:1] == (a.host,), 30,
                        what="the database to place the guest on A")

        # the controller evacuates a host that is not dead: virtlockd refuses B's QEMU
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(b.host, "rebuild_instance", version=V, timeout=300,
                          **self.evacuate_args(args))
        self.assertRegex(str(e.exception), r"(?i)lock")
        self.assertNotIn(u, vntest.domain_uuids("b"))
        disk = os.path.join(a.instance_dir(u), "disk")
        self.assertEqual(lease_holder(disk), virtlockd_pid("a"), "A's virtlockd holds no lease")
        self.assertEqual(vntest.virt("a").lookupByUUIDString(u).state()[0],
                         libvirt.VIR_DOMAIN_RUNNING)
        self.assertTrue(os.path.exists(os.path.join(a.instance_dir(u), "disk")))

        # host A dies whole; B takes the guest over from the shared folder
        vntest.harness("host-crash", "a")
        mark = len(b.console(u))
        r = self.rpc.call(b.host, "rebuild_instance", version=V, timeout=300,
                          **self.evacuate_args(args))
        self.assertEqual((r["vm_state"], r["host"]), ("active", b.host))
        self.assertEqual(wait_console(b, u, READ, after=mark), first,
                         "the evacuated guest did not boot from its own disk")
        vntest.wait_for(lambda: self.db_host(u) == (b.host, "active", None), 30,
                        what="the database to place the guest on B")
        self.assertEqual(lease_holder(disk), virtlockd_pid("b"), "B's virtlockd holds no lease")

        # A comes back: its definition of the guest is there, but a second QEMU of the disk
        # is refused by the lock manager
        vntest.harness("host-start", "a")
        self.assertIn(u, vntest.domain_uuids("a"))
        with self.assertRaises(libvirt.libvirtError) as e:
            vntest.virt("a").lookupByUUIDString(u).create()
        self.assertRegex(str(e.exception), r"(?i)lock")
        self.assertEqual(lease_holder(disk), virtlockd_pid("b"))
        # its agent removes the stale copy, starts nothing, leaves B's folder alone
        a.start()
        vntest.wait_for(lambda: u not in vntest.domain_uuids("a"), 60,
                        what="A to remove its stale copy")
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "get_instance", instance_uuid=u)
        self.assertEqual(e.exception.exc_type, "InstanceNotFound")
        self.assertIn("virtnode_moved_copies_removed_total 1", a.metrics())
        self.assertTrue(os.path.exists(os.path.join(b.instance_dir(u), "disk")))
        self.assertEqual(vntest.virt("b").lookupByUUIDString(u).state()[0],
                         libvirt.VIR_DOMAIN_RUNNING)
        self.assertEqual(self.db_host(u), (b.host, "active", None))
        self.rpc.call(b.host, "terminate_instance", timeout=300, instance_uuid=u)
        print("evacuate (shared storage): refused while A ran it (A's virtlockd held the lease); "
              "after A died it "
              "booted on B from its own disk (marker %s); A back: a second start refused by "
              "the lock, its stale copy removed" % first[-12:])

    def test_evacuate_without_shared_storage(self):
        a = self.agent("a", shared=False).start()
        b = self.agent("b", shared=False).start()
        args = vntest.build_args("evacuee-local", metadata=MARK)
        u = args["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        first = wait_console(a, u, WROTE)
        vntest.harness("host-crash", "a")
        r = self.rpc.call(b.host, "rebuild_instance", version=V, timeout=300,
                          **self.evacuate_args(args))
        self.assertEqual((r["vm_state"], r["host"]), ("active", b.host))
        second = wait_console(b, u, WROTE)
        self.assertNotEqual(first, second, "a disk made from the image was expected")
        vntest.wait_for(lambda: self.db_host(u) == (b.host, "active", None), 30,
                        what="the database to place the guest on B")
        vntest.harness("host-start", "a")
        a.start()
        vntest.wait_for(lambda: not os.path.exists(a.instance_dir(u)), 60,
                        what="A to remove its own copy, folder and all")
        self.assertNotIn(u, vntest.domain_uuids("a"))
        self.assertEqual(vntest.virt("b").lookupByUUIDString(u).state()[0],
                         libvirt.VIR_DOMAIN_RUNNING)
        self.rpc.call(b.host, "terminate_instance", timeout=300, instance_uuid=u)
        print("evacuate (local storage): rebuilt on B from its image; A back removed its copy")

    # ------------------------------------------------------------------ snapshot

    def test_snapshot_uploads_and_boots(self):
        a = self.agent("a").start()
        args = vntest.build_args("snapped", metadata=MARK)
        u = args["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        mark = wait_console(a, u, WROTE)
        url = vntest.ENV["IMAGE_URL"] + "/uploads/snap-%s.qcow2" % u[:8]
        stored = os.path.join(vntest.RUN, "images", "uploads", "snap-%s.qcow2" % u[:8])

        # an upload the server refuses: the guest runs on, nothing is left behind
        urllib.request.urlopen(urllib.request.Request(
            vntest.ENV["IMAGE_URL"] + "/_fail_puts/1", method="POST"))
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "snapshot_instance", version=V, timeout=300, instance_uuid=u,
                          image_id="snap-bad", upload_url=url)
        self.assertIn("507", str(e.exception))
        leftovers = [f for f in os.listdir(a.instance_dir(u)) if f.startswith("disk.snapshot")]
        self.assertEqual(leftovers, [])
        r = self.rpc.call(a.host, "get_instance", instance_uuid=u)
        self.assertEqual((r["vm_state"], r["task_state"]), ("active", None))

        beats = len(re.findall(r"VIRTNODE-HEARTBEAT", a.console(u)))
        r = self.rpc.call(a.host, "snapshot_instance", version=V, timeout=300, instance_uuid=u,
                          image_id="snap-1", upload_url=url)
        with open(stored, "rb") as f:
            data = f.read()
        self.assertEqual((r["sha256"], r["size"]), (hashlib.sha256(data).hexdigest(), len(data)))
        self.assertEqual((r["disk_format"], r["instance"]["vm_state"]), ("qcow2", "active"))
        info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", stored]))
        self.assertEqual(info["format"], "qcow2")
        self.assertNotIn("backing-filename", info)
        # the guest ran throughout: one boot, heartbeats still coming
        vntest.wait_for(lambda: len(re.findall(r"VIRTNODE-HEARTBEAT", a.console(u))) > beats + 2,
                        30, what="heartbeats after the snapshot")
        self.assertEqual(a.console(u).count("VIRTNODE-GUEST-BOOTED"), 1)
        self.assertEqual([f for f in os.listdir(a.instance_dir(u))
                          if f.startswith("disk.snapshot")], [])

        # the image boots as a new guest that finds what the first one wrote
        copy = vntest.build_args("from-snapshot", metadata=MARK, image_id="snap-1",
                                 image=(url, r["sha256"], r["size"]))
        cu = copy["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **copy)
        self.assertEqual(wait_console(a, cu, READ), mark)
        for g in (u, cu):
            self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=g)
        print("snapshot: %d bytes uploaded while the guest ran; a guest booted from it read "
              "marker %s" % (len(data), mark[-12:]))


if __name__ == "__main__":
    unittest.main()
