"""Capacity, heartbeat and instance state in a real PostgreSQL: rows that match the host,
fast updates on change, a database outage survived, a too-large build refused, and a
fleet starting at once against an empty database."""

import os
import time
import unittest
import uuid as uuidlib

import vntest


def capacity(host):
    rows = vntest.db_query(
        "SELECT vcpus, vcpus_used, memory_mb, memory_mb_used, free_ram_mb, local_gb, "
        "local_gb_used, running_vms, hypervisor_type, disk_available_least, updated_at "
        "FROM compute_nodes WHERE host = %s", host)
    if not rows:
        return None
    keys = ("vcpus", "vcpus_used", "memory_mb", "memory_mb_used", "free_ram_mb", "local_gb",
            "local_gb_used", "running_vms", "hypervisor_type", "disk_available_least",
            "updated_at")
    return dict(zip(keys, rows[0]))


class Capacity(vntest.AgentTestCase):
    def test_rows_match_the_host_and_follow_changes(self):
        a = self.agent("a").start()
        c = vntest.wait_for(lambda: capacity("host-a"), 20, what="capacity row")
        conn = vntest.virt("a")
        model, memory_mib, cpus = conn.getInfo()[:3]
        conn.close()
        self.assertEqual(c["vcpus"], cpus)
        self.assertEqual(c["memory_mb"], memory_mib)
        self.assertEqual(c["hypervisor_type"], "QEMU")
        st = os.statvfs(a.instances)
        self.assertEqual(c["local_gb"], st.f_frsize * st.f_blocks // (1 << 30))
        self.assertLessEqual(c["disk_available_least"], st.f_frsize * st.f_bavail // (1 << 30))
        self.assertEqual((c["vcpus_used"], c["running_vms"]), (0, 0))
        self.assertEqual(c["memory_mb_used"], 512)  # the reserved memory

        svc = vntest.db_query("SELECT report_count, last_seen_up FROM services WHERE host = %s "
                              "AND \"binary\" = 'virtnode-compute'", "host-a")
        self.assertEqual(len(svc), 1)
        first = svc[0][0]
        vntest.wait_for(lambda: vntest.db_query(
            "SELECT report_count FROM services WHERE host = %s", "host-a")[0][0] > first, 10,
            what="heartbeat")

        args = vntest.build_args("cap-1", vcpus=1, memory_mb=192)
        u = args["instance"]["uuid"]
        r = self.rpc.call("host-a", "build_and_run_instance", timeout=300, **args)
        t0 = time.monotonic()
        vntest.wait_for(lambda: capacity("host-a")["running_vms"] == 1, 5, interval=0.05,
                        what="running_vms 1")
        moved = time.monotonic() - t0
        c = capacity("host-a")
        self.assertEqual((c["vcpus_used"], c["memory_mb_used"]), (1, 512 + 192))
        self.assertLess(moved, 1.5, "the capacity row followed the build after %.2f s" % moved)
        inst = vntest.db_query("SELECT host, vm_state, power_state, flavor->>'memory_mb' "
                               "FROM instances WHERE uuid = %s", u)
        self.assertEqual(inst, [("host-a", "active", 1, "192")])
        acts = vntest.db_query("SELECT action, result FROM instance_actions WHERE "
                               "instance_uuid = %s", u)
        vntest.wait_for(lambda: vntest.db_query(
            "SELECT result FROM instance_actions WHERE instance_uuid = %s", u) == [("Success",)],
            10, what="build action")

        self.rpc.call("host-a", "terminate_instance", instance_uuid=u)
        t0 = time.monotonic()
        vntest.wait_for(lambda: capacity("host-a")["running_vms"] == 0, 5, interval=0.05,
                        what="running_vms 0")
        self.assertLess(time.monotonic() - t0, 1.5)
        c = capacity("host-a")
        self.assertEqual((c["vcpus_used"], c["memory_mb_used"]), (0, 512))
        self.assertEqual(vntest.db_query("SELECT vm_state FROM instances WHERE uuid = %s", u),
                         [("deleted",)])

    def test_rows_written_together_and_one_refused(self):
        """Instance rows changed together go to PostgreSQL in one pipeline; a row the
        database refuses is dropped alone, and the others of its pipeline are written."""
        a = self.agent("a", shared=False, name="host-batch",
                       extra={"libvirt.uri": "test:///default",
                              "libvirt.require_confinement": "false",
                              "ram_allocation_ratio": "32", "cpu_allocation_ratio": "64",
                              "disk_allocation_ratio": "100"}).start()
        builds = [vntest.build_args("batch-%d" % i, memory_mb=64) for i in range(12)]
        bad = builds[5]["instance"]["uuid"]
        conn = vntest.db()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE OR REPLACE FUNCTION vn_test_refuse() RETURNS trigger AS $$ "
                        "BEGIN IF NEW.uuid = '%s' THEN RAISE EXCEPTION 'refused by the test'; "
                        "END IF; RETURN NEW; END $$ LANGUAGE plpgsql" % bad)
            cur.execute("CREATE TRIGGER vn_test_refuse BEFORE INSERT OR UPDATE ON instances "
                        "FOR EACH ROW EXECUTE FUNCTION vn_test_refuse()")
        try:
            # the table held while the guests are built: their rows pile up in the agent
            lock = vntest.db()
            lock.autocommit = False
            with lock.cursor() as cur:
                cur.execute("LOCK TABLE instances IN EXCLUSIVE MODE")
                for args in builds:
                    self.rpc.cast("host-batch", "build_and_run_instance", **args)

                def running():
                    listed = self.rpc.call("host-batch", "list_instances", timeout=60)
                    return sum(1 for i in listed if i["vm_state"] == "active") == len(builds)
                vntest.wait_for(running, 120, what="12 guests active")
                time.sleep(1)
            lock.rollback()
            lock.close()
            good = [b["instance"]["uuid"] for b in builds if b["instance"]["uuid"] != bad]

            every = [b["instance"]["uuid"] for b in builds]

            def written():
                rows = vntest.db_query("SELECT uuid::text, vm_state FROM instances "
                                       "WHERE uuid::text = ANY(%s)", every)
                return sorted(rows) if len(rows) >= len(good) else None
            rows = vntest.wait_for(written, 30, what="the instance rows")
            self.assertEqual(rows, sorted((u, "active") for u in good))
            vntest.wait_for(lambda: "dropping an update of %s" % bad in a.log_text(), 10,
                            what="the refused row in the log")
        finally:
            with conn.cursor() as cur:
                cur.execute("DROP TRIGGER IF EXISTS vn_test_refuse ON instances")
                cur.execute("DROP FUNCTION IF EXISTS vn_test_refuse()")
            conn.close()

    def test_database_outage(self):
        """PostgreSQL stops for 30 s while guests are built and deleted: the agent goes on,
        logs the outage once, and the rows are exact again within a report interval."""
        a = self.agent("a", extra={"database.retry_interval_max": "2"}).start()
        vntest.wait_for(lambda: capacity("host-a"), 20, what="capacity row")
        keep = self.rpc.call("host-a", "build_and_run_instance", timeout=300,
                             **vntest.build_args("outage-keep", memory_mb=160))
        vntest.harness("pg-stop")
        t_down = time.monotonic()
        try:
            gone = self.rpc.call("host-a", "build_and_run_instance", timeout=300,
                                 **vntest.build_args("outage-gone"))
            self.rpc.call("host-a", "terminate_instance", instance_uuid=gone["uuid"])
            new = self.rpc.call("host-a", "build_and_run_instance", timeout=300,
                                **vntest.build_args("outage-new", vcpus=2, memory_mb=144))
            self.assertEqual(self.rpc.call("host-a", "ping", arg=1)["arg"], 1)
            time.sleep(max(0, 30 - (time.monotonic() - t_down)))
        finally:
            vntest.harness("pg-start")
        t_up = time.monotonic()
        want = {"vcpus_used": 3, "memory_mb_used": 512 + 160 + 144, "running_vms": 2}

        def exact():
            c = capacity("host-a")
            return c and all(c[k] == v for k, v in want.items())
        vntest.wait_for(exact, 30, interval=0.2, what="exact capacity after the outage")
        caught_up = time.monotonic() - t_up
        states = dict(vntest.db_query(
            "SELECT uuid::text, vm_state FROM instances WHERE uuid IN (%s, %s, %s)",
            keep["uuid"], gone["uuid"], new["uuid"]))
        self.assertEqual(states, {keep["uuid"]: "active", gone["uuid"]: "deleted",
                                  new["uuid"]: "active"})
        self.assertLess(caught_up, 2 + 2 * 2)  # reconnect back-off plus a report interval
        log = a.log_text()
        self.assertEqual(log.count("the agent goes on and catches up when it is back") +
                         log.count("retrying with back-off"), 1, "one line per outage")
        self.assertIn("connected again", log)
        for u in (keep["uuid"], new["uuid"]):
            self.rpc.call("host-a", "terminate_instance", instance_uuid=u)

    def test_too_large_build_refused(self):
        a = self.agent("a").start()
        args = vntest.build_args("too-big", vcpus=1, memory_mb=1024 * 1024)
        u = args["instance"]["uuid"]
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call("host-a", "build_and_run_instance", timeout=60, **args)
        self.assertEqual(e.exception.exc_type, "InsufficientResources")
        self.assertIn("memory", str(e.exception))
        got = self.rpc.call("host-a", "get_instance", instance_uuid=u)
        self.assertEqual(got["vm_state"], "error")
        self.assertEqual(got["fault"]["class"], "InsufficientResources")
        self.assertNotIn(u, vntest.domain_uuids("a"))
        self.assertFalse(os.path.exists(a.instance_dir(u)))
        self.rpc.call("host-a", "terminate_instance", instance_uuid=u)

    def test_fleet_start_leaves_one_schema(self):
        """20 agents start at once against an empty database (libvirt's test driver stands
        in for their hypervisors): one correct schema, every host reported."""
        for t in ("services", "compute_nodes", "instances", "instance_actions", "migrations",
                  "virtnode_schema"):
            vntest.db_query("DROP TABLE IF EXISTS %s CASCADE" % t)
        agents = []
        for i in range(20):
            a = self.agent("a", name="fleet-%02d" % i, extra={
                "libvirt.uri": "test:///default", "libvirt.require_confinement": "false",
                "amqp.topic": "compute-fleet"})
            agents.append(a)
        for a in agents:
            a.start(wait=False)
        for a in agents:
            a.wait_ready(120)
        vntest.wait_for(lambda: vntest.db_query(
            "SELECT count(*) FROM compute_nodes WHERE host LIKE 'fleet-%%'")[0][0] == 20, 60,
            what="20 capacity rows")
        versions = vntest.db_query("SELECT version FROM virtnode_schema ORDER BY version")
        self.assertEqual([v[0] for v in versions], list(range(1, len(versions) + 1)))
        tables = vntest.db_query(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND "
            "table_name IN ('services', 'compute_nodes', 'instances', 'instance_actions', "
            "'migrations')")
        self.assertEqual(tables, [(5,)])
        self.assertEqual(vntest.db_query("SELECT count(*) FROM services WHERE host LIKE "
                                         "'fleet-%%'"), [(20,)])
        for a in agents:
            self.assertNotIn("schema migration", a.log_text().replace(
                "database schema migrated to version", ""))
        migrated = sum("database schema migrated to version 1" in a.log_text() for a in agents)
        self.assertEqual(migrated, 1)


if __name__ == "__main__":
    unittest.main()
