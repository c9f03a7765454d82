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
import unittest
import urllib.request

import libvirt

import vntest

MARK = {"vn.rootmark": "1"}
# each up to its line's end: the guest's serial console is read while it is being written
WROTE = re.compile(r"VIRTNODE-ROOT-WROTE (VNROOT-[0-9a-f-]+)\r?\n")
READ = re.compile(r"VIRTNODE-ROOT-READ (VNROOT-[0-9a-f-]+)\r?\n")
SIZE = re.compile(r"VIRTNODE-GUEST-SIZE cpus=(\d+ mem_mb=\d+)\r?\n")
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

    def record(self, host, uuid):
        try:
            return self.rpc.call(host, "get_instance", instance_uuid=uuid)
        except self.rpc.om.RemoteError as e:
            if e.exc_type != "InstanceNotFound":
                raise
            return None

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


    # ------------------------------------------------------------------ resize

    SMALL = {"name": "m1.small", "vcpus": 2, "memory_mb": 256, "root_gb": 2, "ephemeral_gb": 0,
             "swap_mb": 0, "extra_specs": {}}

    def size_after(self, agent, uuid, mark):
        m = wait_console(agent, uuid, SIZE, after=mark)
        cpus, mem = re.match(r"(\d+) mem_mb=(\d+)", m).groups()
        return int(cpus), int(mem)

    def resize_across(self, shared, confirm):
        a = self.agent("a", shared=shared).start()
        b = self.agent("b", shared=shared).start()
        args = vntest.build_args("resizee", metadata=MARK)
        u = args["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        first = wait_console(a, u, WROTE)
        self.assertEqual(self.size_after(a, u, 0)[0], 1)
        mark_b = len(b.console(u))
        r = self.rpc.call(a.host, "resize_instance", version=V, timeout=600, instance_uuid=u,
                          dest_host=b.host, flavor=self.SMALL)
        self.assertEqual((r["vm_state"], r["host"], r["flavor"]["name"]),
                         ("resized", b.host, "m1.small"))
        # the guest runs on B with the new size, on its own disk's content
        cpus, mem = self.size_after(b, u, mark_b)
        self.assertEqual(cpus, 2)
        self.assertGreater(mem, 160)
        self.assertEqual(wait_console(b, u, READ, after=mark_b), first)
        self.assertEqual(vntest.virt("b").lookupByUUIDString(u).state()[0],
                         libvirt.VIR_DOMAIN_RUNNING)
        info = json.loads(subprocess.check_output(
            ["qemu-img", "info", "-U", "--output=json", os.path.join(b.instance_dir(u), "disk")]))
        self.assertEqual(info["virtual-size"], 2 << 30)
        # A keeps its copy, stopped, until confirm or revert
        self.assertEqual(vntest.virt("a").lookupByUUIDString(u).state()[0],
                         libvirt.VIR_DOMAIN_SHUTOFF)
        self.assertTrue(os.path.isdir(a.instance_dir(u) + "_resize"))
        if confirm == "delete":
            # deleting the resized guest confirms the resize: the source's copy goes too
            self.rpc.call(b.host, "terminate_instance", timeout=300, instance_uuid=u)
            self.assertNotIn(u, vntest.domain_uuids("a") + vntest.domain_uuids("b"))
            self.assertFalse(os.path.exists(a.instance_dir(u) + "_resize"))
            self.assertIsNone(self.record(a.host, u))
            a.stop()
            b.stop()
            return first
        if confirm:
            r = self.rpc.call(b.host, "confirm_resize", version=V, timeout=300, instance_uuid=u)
            self.assertEqual((r["vm_state"], r["task_state"]), ("active", None))
            self.assertNotIn(u, vntest.domain_uuids("a"))
            self.assertFalse(os.path.exists(a.instance_dir(u) + "_resize"))
            if not shared:
                self.assertFalse(os.path.exists(a.instance_dir(u)))
            with self.assertRaises(self.rpc.om.RemoteError):
                self.rpc.call(a.host, "get_instance", instance_uuid=u)
            vntest.wait_for(lambda: self.db_host(u) == (b.host, "active", None), 30,
                            what="the database to place the guest on B")
            self.rpc.call(b.host, "terminate_instance", timeout=300, instance_uuid=u)
            a.stop()
            b.stop()
            return first
        # the console A's guest comes back with is the one set aside
        with open(os.path.join(a.instance_dir(u) + "_resize", "console.log"), "rb") as f:
            mark_a = len(f.read().decode(errors="replace"))
        r = self.rpc.call(b.host, "revert_resize", version=V, timeout=600, instance_uuid=u)
        self.assertEqual((r["vm_state"], r["host"], r["flavor"]["name"]),
                         ("active", a.host, "m1.tiny"))
        self.assertEqual(self.size_after(a, u, mark_a)[0], 1)
        self.assertEqual(wait_console(a, u, READ, after=mark_a), first)
        self.assertNotIn(u, vntest.domain_uuids("b"))
        with self.assertRaises(self.rpc.om.RemoteError):
            self.rpc.call(b.host, "get_instance", instance_uuid=u)
        self.assertFalse(os.path.exists(a.instance_dir(u) + "_resize"))
        if not shared:
            self.assertFalse(os.path.exists(b.instance_dir(u)))
        vntest.wait_for(lambda: self.db_host(u) == (a.host, "active", None), 30,
                        what="the database to place the guest on A again")
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)
        a.stop()
        b.stop()
        return first

    def test_resize_shared_confirm_and_revert(self):
        self.resize_across(shared=True, confirm=True)
        self.resize_across(shared=True, confirm=False)
        print("resize (shared storage): m1.tiny -> m1.small on B with 2 vCPUs and its disk; "
              "confirmed (A's copy gone) and reverted (back on A unchanged)")

    def test_resize_local_storage_confirm_and_revert(self):
        self.resize_across(shared=False, confirm=True)
        self.resize_across(shared=False, confirm=False)
        self.resize_across(shared=False, confirm="delete")
        print("resize (local storage, disks over libvirt storage streams): confirmed, "
              "reverted, and deleted while resized (the source's copy went too)")

    def test_resize_refused_and_same_host(self):
        a = self.agent("a").start()
        b = self.agent("b").start()
        args = vntest.build_args("resize-here", metadata=MARK)
        u = args["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        first = wait_console(a, u, WROTE)
        boots = a.console(u).count("VIRTNODE-GUEST-BOOTED")
        # a flavor that does not fit on B: refused before anything moves
        huge = dict(self.SMALL, name="m1.huge", memory_mb=8 << 20)
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "resize_instance", version=V, timeout=300, instance_uuid=u,
                          dest_host=b.host, flavor=huge)
        self.assertEqual(e.exception.exc_type, "InsufficientResources")
        self.assertIn("memory", str(e.exception).lower())
        r = self.rpc.call(a.host, "get_instance", instance_uuid=u)
        self.assertEqual((r["vm_state"], r["task_state"], r["power_state"]), ("active", None, 1))
        self.assertEqual(a.console(u).count("VIRTNODE-GUEST-BOOTED"), boots)
        self.assertFalse(os.path.exists(a.instance_dir(u) + "_resize"))
        # a disabled destination refuses too
        self.rpc.call(b.host, "set_host_enabled", version="1.3", enabled=False, reason="full")
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "resize_instance", version=V, timeout=300, instance_uuid=u,
                          dest_host=b.host)
        self.assertEqual(e.exception.exc_type, "ComputeHostDisabled")
        self.assertIn("full", str(e.exception))
        self.rpc.call(b.host, "set_host_enabled", version="1.3", enabled=True)
        # on its own host: the new size after a restart of the guest, then confirmed
        mark = len(a.console(u))
        r = self.rpc.call(a.host, "resize_instance", version=V, timeout=600, instance_uuid=u,
                          flavor=self.SMALL)
        self.assertEqual((r["vm_state"], r["host"]), ("resized", a.host))
        self.assertEqual(self.size_after(a, u, mark)[0], 2)
        self.assertEqual(wait_console(a, u, READ, after=mark), first)
        r = self.rpc.call(a.host, "confirm_resize", version=V, timeout=300, instance_uuid=u)
        self.assertEqual((r["vm_state"], r["flavor"]["name"]), ("active", "m1.small"))
        self.assertFalse(os.path.exists(a.instance_dir(u) + "_resize"))
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)
        print("resize: a flavor that does not fit and a disabled host refused before anything "
              "moved; on its own host resized and confirmed")

if __name__ == "__main__":
    unittest.main()
