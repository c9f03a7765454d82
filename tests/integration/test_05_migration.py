"""Live migration between two agents, each on its own libvirtd host: shared storage and
block migration with the guest's heartbeat timed across the move; a guest that dirties
memory faster than the capped link, brought to an end by the policy; and failures
(abort, destination agent killed, destination libvirtd refusing) that leave the guest on
the source and nothing on the destination."""

import os
import re
import threading
import time
import unittest

import libvirt

import vntest

HEARTBEAT = re.compile(r"VIRTNODE-HEARTBEAT (\d+)")


class ConsoleTail(threading.Thread):
    """Records when each heartbeat line of a guest appears in its console file(s)."""

    def __init__(self, paths):
        super().__init__(daemon=True)
        self.paths = paths
        self.offsets = {p: 0 for p in paths}
        self.beats = {}  # heartbeat number -> first time seen
        self.stop = False

    def run(self):
        while not self.stop:
            for p in self.paths:
                try:
                    with open(p, "rb") as f:
                        f.seek(self.offsets[p])
                        data = f.read()
                except OSError:
                    continue
                if not data:
                    continue
                cut = data.rfind(b"\n") + 1
                self.offsets[p] += cut
                now = time.monotonic()
                for m in HEARTBEAT.finditer(data[:cut].decode(errors="replace")):
                    self.beats.setdefault(int(m.group(1)), now)
            time.sleep(0.02)

    def max_gap(self, since):
        times = [t for n, t in sorted(self.beats.items()) if t >= since]
        gaps = [b - a for a, b in zip(times, times[1:])]
        return max(gaps) if gaps else 0.0


class Migration(vntest.AgentTestCase):
    def pair(self, shared=True, **extra):
        a = self.agent("a", shared=shared, extra=extra)
        b = self.agent("b", shared=shared, extra=extra)
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        return a, b

    def boot(self, a, name, **kw):
        args = vntest.build_args(name, **kw)
        r = self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        self.assertEqual(r["vm_state"], "active")
        u = args["instance"]["uuid"]
        vntest.wait_for(lambda: HEARTBEAT.search(a.console(u)), 60, what="heartbeats")
        return u

    def boot_dirty(self, a, name):
        """A 256 MiB guest dirtying 48 MiB in a loop, once its working set is written."""
        u = self.boot(a, name, memory_mb=256, metadata=self.DIRTY)
        vntest.wait_for(lambda: "VIRTNODE-DIRTY-SEEDED" in a.console(u), 60, what="seeded")
        return u

    def wait_destination_clean(self, b, u, timeout):
        vntest.wait_for(lambda: u not in vntest.domain_uuids("b") and
                        not os.path.exists(b.instance_dir(u)), timeout, what="destination clean")
        self.assert_nothing_on(b, u, shared=False)

    def migration(self, host, u):
        return self.rpc.migration(host, u)

    def migrate(self, a, b, u, block=None, wait=True, timeout=300):
        # the host may know an earlier migration of the guest (the one that brought it)
        before = (self.migration(a.host, u) or {}).get("id")
        self.rpc.cast(a.host, "live_migration", version="1.1", instance_uuid=u,
                      dest_host=b.host, block_migration=block)
        if not wait:
            return None
        # the cast may not have reached the agent yet: wait for its migration to show up
        vntest.wait_for(lambda: (self.migration(a.host, u) or {}).get("id") not in (None, before),
                        30, what="the migration to start")
        return self.wait_ended(a, u, timeout)

    def wait_ended(self, a, u, timeout=120):
        return self.rpc.wait_migration_ended(a.host, u, timeout)

    def wait_running(self, a, u, timeout=60):
        vntest.wait_for(lambda: (self.migration(a.host, u) or {}).get("status") == "running",
                        timeout, interval=0.2, what="migration running")

    def assert_on(self, host_key, agent, u):
        other = "b" if host_key == "a" else "a"
        self.assertIn(u, vntest.domain_uuids(host_key))
        self.assertNotIn(u, vntest.domain_uuids(other))
        c = vntest.virt(host_key)
        self.assertEqual(c.lookupByUUIDString(u).state()[0], libvirt.VIR_DOMAIN_RUNNING)
        c.close()
        got = self.rpc.call(agent.host, "get_instance", instance_uuid=u)
        self.assertEqual((got["host"], got["vm_state"], got["task_state"]),
                         (agent.host, "active", None))

    def assert_nothing_on(self, b, u, shared):
        self.assertNotIn(u, vntest.domain_uuids(b.key))
        with self.assertRaises(self.rpc.om.RemoteError):
            self.rpc.call(b.host, "get_instance", instance_uuid=u)
        if not shared:
            self.assertFalse(os.path.exists(b.instance_dir(u)), "disks left on the destination")

    def assert_row(self, m, status):
        rows = vntest.db_query("SELECT status, error_message, downtime_ms FROM migrations "
                               "WHERE id = %s", m["id"])
        self.assertEqual(rows[0][0], status)
        return rows[0]

    def check_heartbeat(self, tail, t0, m):
        beats = len(tail.beats)
        time.sleep(3)
        self.assertGreater(len(tail.beats), beats, "the guest's heartbeat stopped")
        gap = tail.max_gap(t0)
        downtime = (m["downtime_ms"] or 0) / 1000.0
        # a heartbeat a second, plus the pause the migration reported, plus the slack of
        # a TCG guest and a 20 ms file poll
        self.assertLess(gap, 1.0 + downtime + 0.5,
                        "gap %.2f s with a reported downtime of %.3f s" % (gap, downtime))

    def move_timed(self, a, b, u, consoles, block):
        """Migrates @u from a to b while timing its heartbeat in @consoles; checks it ended
        on b, in libvirt, in the agents and in the database."""
        tail = ConsoleTail(consoles)
        tail.start()
        t0 = time.monotonic()
        m = self.migrate(a, b, u)
        self.assertEqual(m["status"], "completed", m)
        self.assertEqual(m["block_migration"], block)
        self.check_heartbeat(tail, t0, m)
        tail.stop = True
        self.assert_on("b", b, u)
        self.assertEqual(vntest.db_query("SELECT host FROM instances WHERE uuid = %s", u),
                         [("host-b",)])
        return m

    def test_shared_storage(self):
        a, b = self.pair(shared=True)
        u = self.boot(a, "mig-shared")
        m = self.move_timed(a, b, u, [os.path.join(a.instance_dir(u), "console.log")], False)
        with self.assertRaises(self.rpc.om.RemoteError):
            self.rpc.call(a.host, "get_instance", instance_uuid=u)
        row = self.assert_row(m, "completed")
        self.assertIsNotNone(row[2])
        # the same guest goes back
        m2 = self.migrate(b, a, u)
        self.assertEqual(m2["status"], "completed", m2)
        self.assert_on("a", a, u)
        self.rpc.call(a.host, "terminate_instance", instance_uuid=u)

    def test_block_migration(self):
        a, b = self.pair(shared=False)
        u = self.boot(a, "mig-block")
        self.move_timed(a, b, u, [os.path.join(a.instance_dir(u), "console.log"),
                                  os.path.join(b.instance_dir(u), "console.log")], True)
        self.assertFalse(os.path.exists(a.instance_dir(u)), "source disks left")
        self.assertTrue(os.path.exists(os.path.join(b.instance_dir(u), "disk")))
        self.rpc.call(b.host, "terminate_instance", instance_uuid=u)

    # a guest dirtying 48 MiB in a loop, migrated over a 40 MiB/s link, never converges
    DIRTY = {"vn.mode": "dirty", "vn.dirty_mb": "48"}
    CAPPED = {"libvirt.live_migration_bandwidth": "40"}

    def test_non_converging_auto_converge(self):
        a, b = self.pair(**self.CAPPED, **{"libvirt.live_migration_permit_auto_converge": "true"})
        u = self.boot_dirty(a, "dirty-ac")
        m = self.migrate(a, b, u)
        self.assertEqual(m["status"], "completed", m)
        self.assert_on("b", b, u)
        self.rpc.call(b.host, "terminate_instance", instance_uuid=u)

    def test_non_converging_post_copy(self):
        a, b = self.pair(**self.CAPPED, **{
            "libvirt.live_migration_permit_post_copy": "true",
            "libvirt.live_migration_completion_timeout": "4",
            "libvirt.live_migration_timeout_action": "force_complete"})
        u = self.boot_dirty(a, "dirty-pc")
        m = self.migrate(a, b, u)
        self.assertEqual(m["status"], "completed", m)
        self.assertIn("post-copy", m["action"])
        self.assert_on("b", b, u)
        self.rpc.call(b.host, "terminate_instance", instance_uuid=u)

    def test_non_converging_aborted(self):
        a, b = self.pair(**self.CAPPED, **{"libvirt.live_migration_completion_timeout": "4"})
        u = self.boot_dirty(a, "dirty-abort")
        m = self.migrate(a, b, u)
        self.assertEqual(m["status"], "cancelled", m)
        self.assertIn("completion timeout", m["error"])
        self.assert_on("a", a, u)
        self.assert_nothing_on(b, u, shared=True)
        row = self.assert_row(m, "cancelled")
        self.assertIn("completion timeout", row[1])
        self.rpc.call(a.host, "terminate_instance", instance_uuid=u)

    def test_operator_abort(self):
        a, b = self.pair(shared=False, **self.CAPPED)
        u = self.boot_dirty(a, "abort-me")
        self.migrate(a, b, u, wait=False)
        self.wait_running(a, u)
        time.sleep(2)
        self.rpc.cast(a.host, "live_migration_abort", version="1.1", instance_uuid=u)
        m = self.wait_ended(a, u)
        self.assertEqual(m["status"], "cancelled", m)
        self.assertIn("on request", m["error"])
        self.assert_on("a", a, u)
        self.wait_destination_clean(b, u, 20)
        self.rpc.call(a.host, "terminate_instance", instance_uuid=u)

    def test_destination_agent_killed(self):
        a, b = self.pair(shared=False, **self.CAPPED)
        u = self.boot_dirty(a, "dest-dies")
        self.migrate(a, b, u, wait=False)
        self.wait_running(a, u)
        b.kill9()
        m = self.wait_ended(a, u)
        self.assertEqual(m["status"], "cancelled", m)
        self.assertIn("destination agent", m["error"])
        self.assert_on("a", a, u)
        self.assert_row(m, "cancelled")
        # the destination agent comes back and undoes its preparation (the rollback waited
        # for it in its queue)
        b.start()
        self.wait_destination_clean(b, u, 30)
        self.rpc.call(a.host, "terminate_instance", instance_uuid=u)

    def test_source_agent_killed_row_closed(self):
        """kill -9 of the source agent mid-migration: after its restart the migration is
        over one way or the other, the guest runs on exactly one host, the central row is
        closed (not left running for good), and get_migration answers on both hosts."""
        a, b = self.pair(shared=False, **self.CAPPED)
        u = self.boot_dirty(a, "source-dies")
        self.migrate(a, b, u, wait=False)
        self.wait_running(a, u)
        mid = self.migration(a.host, u)["id"]
        a.kill9()
        a.start()
        m = self.wait_ended(a, u, 120)
        self.assertEqual(m["id"], mid)
        self.assertIn(m["status"], ("cancelled", "completed"), m)
        row = self.assert_row(m, m["status"])
        # exactly one host keeps the guest, once the other side's clean-up has run
        if m["status"] == "cancelled":
            self.wait_destination_clean(b, u, 60)
            self.assert_on("a", a, u)
            host = a
        else:
            vntest.wait_for(lambda: u not in vntest.domain_uuids("a"), 60,
                            what="the source's domain gone")
            self.assert_on("b", b, u)
            host = b
        vntest.wait_for(lambda: (self.migration(b.host, u) or {}).get("status") in
                        ("cancelled", "completed"), 60, what="the destination's entry closed")
        self.assertEqual(self.migration(b.host, u)["id"], mid)
        print("source killed mid-migration: %s, row %s" % (m["status"], row[0]))
        self.rpc.call(host.host, "terminate_instance", instance_uuid=u)

    def test_destination_never_takes_over(self):
        """The destination's agent refuses the take-over after libvirt moved the guest (its
        post_live_migration_at_destination fails: here, it would run the guest without a
        per-guest identity while confinement is required).  The migration ends in error,
        not success; the source forgets the guest, which runs on the destination, and the
        destination's agent adopts it when it restarts."""
        a = self.agent("a", shared=True)
        b = self.agent("b", shared=True, extra={"libvirt.per_guest_dac": "false"})
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        u = self.boot(a, "no-take-over")
        m = self.migrate(a, b, u, timeout=180)
        self.assertEqual(m["status"], "error", m)
        self.assertIn("did not take it over", m["error"])
        self.assert_row(m, "error")
        self.assertIn(u, vntest.domain_uuids("b"))
        self.assertNotIn(u, vntest.domain_uuids("a"))
        with self.assertRaises(self.rpc.om.RemoteError):
            self.rpc.call(a.host, "get_instance", instance_uuid=u)
        # the destination's agent, restarted (configured normally again), adopts the guest
        b.stop()
        with open(b.conf) as f:
            conf = f.read()
        with open(b.conf, "w") as f:
            f.write(conf.replace("per_guest_dac = false", "per_guest_dac = true"))
        b.start()
        got = vntest.wait_for(
            lambda: (lambda r: r if r["task_state"] is None else None)(
                self.rpc.call(b.host, "get_instance", instance_uuid=u)), 30,
            what="the guest adopted")
        self.assertEqual((got["host"], got["vm_state"]), ("host-b", "active"))
        self.rpc.call(b.host, "terminate_instance", instance_uuid=u)

    def test_destination_libvirtd_refusing(self):
        a, b = self.pair(shared=True)
        u = self.boot(a, "dest-refuses")
        vntest.harness("host-stop", "b")
        try:
            m = self.migrate(a, b, u, timeout=120)
        finally:
            vntest.harness("host-start", "b")
        self.assertIn(m["status"], ("failed", "cancelled"), m)
        self.assertTrue(m["error"])
        self.assert_on("a", a, u)
        self.assert_row(m, m["status"])
        b.wait_ready(60)
        self.assert_nothing_on(b, u, shared=True)
        self.rpc.call(a.host, "terminate_instance", instance_uuid=u)


if __name__ == "__main__":
    unittest.main()
