"""PostgreSQL failover: a primary and its streaming standby of their own (not the run's
shared database), the agent given both in one libpq multi-host string with
target_session_attrs=read-write.  The primary dies (immediate stop) while a guest is
built and the host is disabled; the standby is promoted.  The agent keeps serving, finds
the new primary, re-prepares its statements and writes what happened meanwhile: the rows
are exact within one report interval, and the outage is one warning line and one line
when it ends."""

import os
import shutil
import subprocess
import time
import unittest

import psycopg2

import vntest

PGBIN = "/usr/lib/postgresql/15/bin"


def as_pg(*argv):
    r = subprocess.run(["runuser", "-u", "postgres", "--"] + list(argv), capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError("%s: %s%s" % (" ".join(argv), r.stdout, r.stderr))


class DbFailover(vntest.AgentTestCase):
    def setUp(self):
        super().setUp()
        self.dir = os.path.join(vntest.RUN, "pgfail-%d" % os.getpid())
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        shutil.chown(self.dir, "postgres")
        self.ports = (vntest.free_port(), vntest.free_port())
        self.data = (os.path.join(self.dir, "primary"), os.path.join(self.dir, "standby"))
        as_pg(os.path.join(PGBIN, "initdb"), "-D", self.data[0], "-A", "trust", "-U", "postgres",
              "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        self.pg_start(0)
        as_pg(os.path.join(PGBIN, "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.ports[0]),
              "-U", "postgres", "-D", self.data[1], "-R", "-X", "stream")
        self.pg_start(1)

    def tearDown(self):
        super().tearDown()
        for d in self.data:
            subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(PGBIN, "pg_ctl"), "-D",
                            d, "stop", "-m", "immediate"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def pg_start(self, i):
        as_pg(os.path.join(PGBIN, "pg_ctl"), "-D", self.data[i], "-l",
              os.path.join(self.dir, "pg%d.log" % i), "-w", "-t", "60", "-o",
              "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off" % (self.ports[i], self.dir),
              "start")

    def query(self, i, sql, *args):
        conn = psycopg2.connect(host="127.0.0.1", port=self.ports[i], user="postgres",
                                dbname="postgres")
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            conn.close()

    def test_primary_dies_standby_promoted(self):
        conninfo = ("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=postgres "
                    "target_session_attrs=read-write connect_timeout=2" % self.ports)
        a = self.agent("a", extra={"database.connection": conninfo, "report_interval": "2",
                                   "database.retry_interval_max": "2"}).start()
        vntest.wait_for(lambda: self.query(0, "SELECT 1 FROM services WHERE host = %s", a.host),
                        30, what="the heartbeat on the primary")
        # the standby replays it: the same rows there before the failover
        vntest.wait_for(lambda: self.query(1, "SELECT 1 FROM services WHERE host = %s", a.host),
                        30, what="the standby to replay")

        as_pg(os.path.join(PGBIN, "pg_ctl"), "-D", self.data[0], "stop", "-m", "immediate")
        t0 = time.monotonic()
        # meanwhile the agent keeps serving: a build, and the host disabled
        args = vntest.build_args("failover-1")
        u = args["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        self.rpc.call(a.host, "set_host_enabled", version="1.3", enabled=False,
                      reason="failover test")
        # a failover manager's detection time: the agent retries meanwhile, quietly
        time.sleep(max(0, 6 - (time.monotonic() - t0)))
        as_pg(os.path.join(PGBIN, "pg_ctl"), "-D", self.data[1], "promote", "-w")
        promoted = time.monotonic()

        def exact():
            inst = self.query(1, "SELECT host, vm_state FROM instances WHERE uuid = %s", u)
            svc = self.query(1, "SELECT disabled, disabled_reason, now() - last_seen_up < "
                                "interval '3 seconds' FROM services WHERE host = %s", a.host)
            return inst == [(a.host, "active")] and svc == [(True, "failover test", True)]
        vntest.wait_for(exact, 2 * 2 + 10, interval=0.2,
                        what="the rows on the new primary")
        caught_up = time.monotonic() - promoted
        print("failover: outage %.1f s, rows exact %.1f s after the promotion" %
              (promoted - t0, caught_up))
        self.assertLessEqual(caught_up, 2 * 2 + 2, "within one report interval of the reconnect")
        log = a.log_text()
        outage = [l for l in log.splitlines() if "database:" in l and
                  ("goes on" in l or "retrying" in l)]
        back = [l for l in log.splitlines() if "database: connected again" in l]
        self.assertEqual(len(outage), 1, "\n".join(outage))
        self.assertEqual(len(back), 1, "\n".join(back))
        self.assertEqual(self.rpc.call(a.host, "ping", arg=7)["arg"], 7)
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)


if __name__ == "__main__":
    unittest.main()
