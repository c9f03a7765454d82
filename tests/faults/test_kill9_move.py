"""Fault: kill -9 at random moments of rebuild, snapshot, evacuation and resize (source or
destination agent killed), each followed by a restart.  After every round: the guest runs
on exactly one host, its record there has no task left, nothing is orphaned (no half-made
disk or snapshot file, no set-aside folder once the resize is settled, no record or
domain on the other host), and the request was answered or reported failed (its
instance_actions row has ended)."""

import os
import random
import time
import unittest
import uuid as uuidlib

import libvirt

import vntest

V = "1.4"
SMALL = {"name": "m1.small", "vcpus": 2, "memory_mb": 192, "root_gb": 1, "ephemeral_gb": 0,
         "swap_mb": 0, "extra_specs": {}}


class Kill9Move(vntest.AgentTestCase):
    def setUp(self):
        super().setUp()
        seed = int(os.environ.get("VN_FAULT_SEED", time.time()))
        self.rng = random.Random(seed)
        print("seed %d (VN_FAULT_SEED reproduces the rounds)" % seed)

    def tearDown(self):
        for key in ("a", "b"):
            if not os.path.exists(os.path.join(vntest.RUN, "hosts", key, "pid")):
                vntest.harness("host-start", key)
        super().tearDown()

    def running_on(self, u):
        out = []
        for key in ("a", "b"):
            c = vntest.virt(key)
            try:
                if c.lookupByUUIDString(u).state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                    out.append(key)
            except libvirt.libvirtError:
                pass
            finally:
                c.close()
        return out

    def record(self, host, u):
        try:
            return self.rpc.call(host, "get_instance", timeout=30, instance_uuid=u)
        except self.rpc.om.RemoteError as e:
            if e.exc_type != "InstanceNotFound":
                raise
            return None

    def ended(self, rid):
        """The request's action row has ended: answered, or reported failed."""
        def done():
            rows = vntest.db_query("SELECT result FROM instance_actions WHERE request_id = %s "
                                   "AND finish_time IS NOT NULL", rid)
            return rows[0][0] if rows else None
        return vntest.wait_for(done, 120, interval=0.5, what="the action of %s to end" % rid)

    def leftovers(self, folder):
        return [f for f in os.listdir(folder) if f.startswith("disk.rebuild") or
                f.startswith("disk.snapshot")] if os.path.isdir(folder) else []

    def test_rebuild_and_snapshot(self):
        a = self.agent("a").start()
        args = vntest.build_args("k9-rebuild")
        u = args["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        image2 = vntest.publish_image("guest-v2.qcow2")
        results = []
        for rnd in range(6):
            rid = "req-k9m-%s" % uuidlib.uuid4().hex[:10]
            flow = "rebuild" if rnd % 2 == 0 else "snapshot"
            if flow == "rebuild":
                url, sha, size = image2 if rnd % 4 == 0 else vntest.publish_image()
                self.rpc.cast(a.host, "rebuild_instance", version=V, ctx={"request_id": rid},
                              instance_uuid=u, image={"id": "k9-%d" % rnd, "url": url,
                                                      "sha256": sha, "disk_format": "qcow2"})
            else:
                self.rpc.cast(a.host, "snapshot_instance", version=V, ctx={"request_id": rid},
                              instance_uuid=u, image_id="k9-%d" % rnd,
                              upload_url=vntest.ENV["IMAGE_URL"] + "/uploads/k9-%d" % rnd)
            time.sleep(self.rng.uniform(0.05, 2.0))
            a.kill9()
            a.start()
            rec = vntest.wait_for(lambda: (lambda r: r if r and r["task_state"] is None
                                           else None)(self.record(a.host, u)),
                                  300, what="the instance to settle")
            results.append("%s:%s" % (flow, self.ended(rid)))
            self.assertEqual(rec["vm_state"], "active", "round %d (%s)" % (rnd, flow))
            vntest.wait_for(lambda: self.running_on(u) == ["a"], 60,
                            what="the guest running on A (round %d, %s)" % (rnd, flow))
            self.assertEqual(self.leftovers(a.instance_dir(u)), [], "round %d" % rnd)
        print("kill -9 during rebuild/snapshot: %s; the guest ran on A after every round" %
              ", ".join(results))
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)

    def test_evacuate(self):
        results = []
        for rnd in range(2):
            a = self.agent("a").start()
            b = self.agent("b").start()
            args = vntest.build_args("k9-evac-%d" % rnd)
            u = args["instance"]["uuid"]
            self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
            vntest.wait_for(lambda: vntest.db_query(
                "SELECT host FROM instances WHERE uuid = %s AND task_state IS NULL", u) ==
                [(a.host,)], 30, what="the database to place the guest on A")
            vntest.harness("host-crash", "a")
            rid = "req-k9e-%s" % uuidlib.uuid4().hex[:10]
            self.rpc.cast(b.host, "rebuild_instance", version=V, ctx={"request_id": rid},
                          instance_uuid=u, recreate=True, **args)
            time.sleep(self.rng.uniform(0.1, 4.0))
            b.kill9()
            b.start()
            results.append(self.ended(rid))
            rec = vntest.wait_for(lambda: (lambda r: r if r and r["task_state"] is None
                                           else None)(self.record(b.host, u)),
                                  300, what="the evacuated instance to settle on B")
            self.assertEqual(rec["vm_state"], "active", rec)
            vntest.harness("host-start", "a")
            a.start()
            vntest.wait_for(lambda: self.running_on(u) == ["b"] and
                            u not in vntest.domain_uuids("a"), 90,
                            what="the guest on B only, A's copy gone (round %d)" % rnd)
            self.assertIsNone(self.record(a.host, u))
            self.rpc.call(b.host, "terminate_instance", timeout=300, instance_uuid=u)
            a.stop()
            b.stop()
        print("kill -9 during evacuation: %s; the guest ran on B alone after every round" %
              ", ".join(results))

    def test_resize(self):
        results = []
        for rnd in range(4):
            a = self.agent("a").start()
            b = self.agent("b").start()
            args = vntest.build_args("k9-resize-%d" % rnd)
            u = args["instance"]["uuid"]
            self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
            rid = "req-k9r-%s" % uuidlib.uuid4().hex[:10]
            self.rpc.cast(a.host, "resize_instance", version=V, ctx={"request_id": rid},
                          instance_uuid=u, dest_host=b.host, flavor=SMALL)
            victim = a if rnd % 2 == 0 else b
            time.sleep(self.rng.uniform(0.2, 8.0))
            victim.kill9()
            victim.start()
            results.append("%s killed: %s" % (victim.key, self.ended(rid)))

            def settled():
                ra, rb = self.record(a.host, u), self.record(b.host, u)
                if not ra or ra["task_state"] not in (None, "resize_migrated"):
                    return None
                if rb and rb["task_state"] is not None:
                    return None
                return ra, rb
            ra, rb = vntest.wait_for(settled, 300, what="the resize to settle")
            aside = a.instance_dir(u) + "_resize"
            if rb:
                # it got there: the resize is open; end it either way
                self.assertEqual((rb["vm_state"], ra["task_state"]), ("resized", "resize_migrated"))
                self.assertEqual(self.running_on(u), ["b"])
                end = "confirm_resize" if self.rng.random() < 0.5 else "revert_resize"
                self.rpc.call(b.host, end, version=V, timeout=600, instance_uuid=u)
                where = "b" if end == "confirm_resize" else "a"
                results[-1] += " then %s" % end
            else:
                self.assertEqual((ra["vm_state"], ra["task_state"]), ("active", None))
                where = "a"
            vntest.wait_for(lambda: self.running_on(u) == [where], 90,
                            what="the guest running on %s alone (round %d)" % (where, rnd))
            other = "b" if where == "a" else "a"
            self.assertNotIn(u, vntest.domain_uuids(other))
            self.assertIsNone(self.record((b if other == "b" else a).host, u))
            self.assertFalse(os.path.exists(aside), "set-aside folder left (round %d)" % rnd)
            self.rpc.call((a if where == "a" else b).host, "terminate_instance", timeout=300,
                          instance_uuid=u)
            a.stop()
            b.stop()
        print("kill -9 during resize: %s; the guest ran on exactly one host after every round" %
              "; ".join(results))


if __name__ == "__main__":
    unittest.main()
