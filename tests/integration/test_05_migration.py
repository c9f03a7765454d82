"""Live migration between two agents, each on its own libvirtd host: shared storage and
block migration with the guest's heartbeat timed across the move; a guest that dirties
memory faster than the capped link, brought to an end by the policy; and failures
(abort, destination agent killed, destination libvirtd refusing) that leave the guest on
the source and nothing on the destination."""

import os
import re
import shutil
import socket
import struct
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


class FirstSegments(threading.Thread):
    """Captures, on the loopback interface, the first bytes the client sends on every TCP
    connection made to a port in [lo, hi]: what a migration stream opens with (QEMU's
    "QEVM" magic in plain text, a TLS handshake record otherwise), or an NBD disk copy
    (its flags, then the options it asks for: STARTTLS with TLS)."""

    HEAD = 32

    def __init__(self, lo, hi):
        super().__init__(daemon=True)
        self.lo, self.hi = lo, hi
        self.isn = {}    # (sport, dport) -> the SYN's sequence number
        self.first = {}  # (sport, dport) -> bytearray of the stream's first HEAD bytes
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                pkt = self.sock.recv(256)
            except socket.timeout:
                continue
            ip = pkt[14:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            tcp = ip[(ip[0] & 15) * 4:]
            sport, dport, seq = struct.unpack("!HHI", tcp[:8])
            if not self.lo <= dport <= self.hi:
                continue
            flow, flags = (sport, dport), tcp[13]
            if flags & 0x02:  # SYN
                self.isn[flow] = seq
                continue
            data = tcp[(tcp[12] >> 4) * 4:]
            if not data or flow not in self.isn:
                continue
            off = (seq - self.isn[flow] - 1) % (1 << 32)
            if off < self.HEAD:
                head = self.first.setdefault(flow, bytearray(self.HEAD))
                chunk = data[:self.HEAD - off]
                head[off:off + len(chunk)] = chunk

    def finish(self):
        self.stop = True
        self.join()
        self.sock.close()
        return [bytes(h) for h in self.first.values()]

    NBD_OPT = b"IHAVEOPT"

    @classmethod
    def check_encrypted(cls, test, streams):
        """Every stream opens with a TLS handshake, or is NBD asking for STARTTLS first."""
        test.assertTrue(streams, "no migration connection seen")
        for head in streams:
            if head[4:12] == cls.NBD_OPT:
                test.assertEqual(struct.unpack("!I", head[12:16])[0], 5,
                                 "an NBD disk copy without STARTTLS: %r" % head)
            else:
                test.assertEqual(head[:2], b"\x16\x03", "a plain-text stream: %r" % head)


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
        """The central row of @m reaches @status: the reporter writes it a moment after the
        agent's own record (after a restart, once its database connection is back)."""
        def row():
            rows = vntest.db_query("SELECT status, error_message, downtime_ms FROM migrations "
                                   "WHERE id = %s", m["id"])
            return rows[0] if rows and rows[0][0] == status else None
        return vntest.wait_for(row, 15, what="the central row of migration %s to be %s" %
                               (m["id"], status))

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

    def migrate_captured(self, src, dst, u, **kw):
        """Migrates @u from agent @src to @dst while capturing the streams to @dst's
        migration ports; returns (the migration, the first bytes of each stream)."""
        lo = int(vntest.ENV["HOST_%s_MIGRATION_PORT" % dst.key.upper()])
        cap = FirstSegments(lo, lo + 15)
        cap.start()
        try:
            m = self.migrate(src, dst, u, **kw)
        finally:
            streams = cap.finish()
        return m, streams

    def test_native_tls(self):
        """live_migration_with_native_tls: the memory and the copied disk cross in TLS
        (QEMU's own, with certificates of the test CA whose keys are encrypted: each guest
        runs under its own uid and reads them, only the migrating QEMU gets the passphrase
        from libvirt's secret). First, the control: the same capture sees QEMU's plain-text
        magic with the option off (its default), so it can tell."""
        a, b = self.pair(shared=False)
        u = self.boot(a, "mig-tls")
        m, streams = self.migrate_captured(a, b, u)
        self.assertEqual(m["status"], "completed", m)
        self.assertIn(b"QEVM", [h[:4] for h in streams], streams)

        # the option set on both agents, applied by SIGHUP
        for agent in (a, b):
            with open(agent.conf) as f:
                text = f.read()
            with open(agent.conf, "w") as f:
                f.write(text.replace("[libvirt]\n",
                                     "[libvirt]\nlive_migration_with_native_tls = true\n"))
            os.kill(agent.daemon_pid(), 1)
            vntest.wait_for(lambda: "configuration reloaded" in agent.log_text(), 10,
                            what="reload")
        m, streams = self.migrate_captured(b, a, u)
        self.assertEqual(m["status"], "completed", m)
        FirstSegments.check_encrypted(self, streams)
        nbd = sum(h[4:12] == FirstSegments.NBD_OPT for h in streams)
        self.assertGreaterEqual(nbd, 1, "the disk copy was not seen")
        self.assertGreaterEqual(len(streams) - nbd, 1, "the memory stream was not seen")
        self.assert_on("a", a, u)
        print("native TLS: %d migration stream(s) in TLS, %d NBD disk copy(ies) through "
              "STARTTLS" % (len(streams) - nbd, nbd))
        self.rpc.call(a.host, "terminate_instance", instance_uuid=u)

    def test_native_tls_refused(self):
        """Bad certificates on either side refuse the migration with libvirt's reason; it
        is never retried in plain text, the guest runs on, nothing is left on the
        destination; with the right certificates back, the same guest moves."""
        import pki
        hosts = os.path.join(vntest.RUN, "hosts")
        passphrase = vntest.harness_out("qemu-tls-passphrase").strip()
        cases = [  # (host whose folder is replaced, its IP and name, CA, validity)
            ("a", "127.0.0.2", "host-a", "other-ca", (-1, 30), "another CA signed the source"),
            ("b", "127.0.0.9", "host-z", "ca", (-1, 30), "the destination's name is wrong"),
            ("b", "127.0.0.3", "host-b", "ca", (-10, -1), "the destination's cert expired"),
        ]
        a, b = self.pair(shared=False, **{"libvirt.live_migration_with_native_tls": "true"})
        u = self.boot(a, "mig-tls-bad")
        for key, ip, name, ca, days, what in cases:
            live = os.path.join(hosts, key, "pki-qemu")
            os.rename(live, live + ".good")
            try:
                pki.qemu_set(vntest.ENV["PKI_DIR"], live, passphrase, ip, name, ca, days)
                m, streams = self.migrate_captured(a, b, u, timeout=120)
            finally:
                shutil.rmtree(live)
                os.rename(live + ".good", live)
            self.assertIn(m["status"], ("failed", "cancelled", "error"), (what, m))
            print("native TLS refused (%s): %s" % (what, m["error"]))
            self.assertRegex(m["error"], r"(?i)tls|certificate|handshake", what)
            if streams:
                FirstSegments.check_encrypted(self, streams)
            self.assert_on("a", a, u)
            self.assert_nothing_on(b, u, shared=False)
        m = self.migrate(a, b, u)
        self.assertEqual(m["status"], "completed", m)
        self.assert_on("b", b, u)
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
