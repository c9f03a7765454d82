"""The agent's own footprint, against the services of a harness run (VN_TEST_ENV):

1. Memory as guests accumulate: an agent on libvirt's test:///default driver, with its
   database and broker links and the shipped defaults otherwise, measured idle (after
   start) and with 10, 100 and 1,000 guests built (--guests); private memory
   (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) and RSS, and the growth per
   guest over idle.  The baseline, in the same run: bench_bare holding as many guests
   (its idle: one guest), that is libvirt's test driver (which runs inside either
   process) with the same domains, and nothing of the agent; the agent's own cost per
   guest is its growth less the bare program's.  The agent's /metrics tells how its heap
   grows: bytes in use (the agent, and libvirt's test driver inside it), bytes free but held
   by the allocator, and SQLite's share.
2. Capacity freshness: --changes changes of the host's usage, alternately a build and a
   terminate (calls), each timed from the call sent to the first moment the host's
   compute_nodes row in PostgreSQL shows the new memory_mb_used (polled every 2 ms on a
   connection of its own).  The baseline: the same poller watching a row that a client
   updates itself, in the same run: the database's own write-to-visible time.

Prints a table, or one JSON line with --json."""

import argparse
import json
import statistics
import sys
import time

import vntest
from bench_build import bare_builds, test_agent, warm_up
from vntest import Rpc

def memory_kib(pid):
    """(private, rss) KiB of process @pid."""
    priv = rss = 0
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Private_Clean", "Private_Dirty"):
                priv += int(rest.split()[0])
            elif key == "Rss":
                rss = int(rest.split()[0])
    return priv, rss


def heap_kib(metrics):
    """The agent's own account of its heap (its /metrics), KiB: in use, free but held by
    the allocator, and SQLite's part of what is in use."""
    def value(sample):
        return int(vntest.metric_value(metrics, sample) / 1024)
    return {"heap_in_use_kib": value('virtnode_heap_bytes{state="in_use"}'),
            "heap_free_kib": value('virtnode_heap_bytes{state="free"}'),
            "sqlite_kib": value("virtnode_journal_memory_bytes")}


def build_until(rpc, agent, have, want):
    """Casts builds until @want guests run (from @have); waits for them."""
    for i in range(have, want):
        rpc.cast(agent.host, "build_and_run_instance",
                 **vntest.build_args("mem-%04d" % i, memory_mb=64))

    def running():
        listed = rpc.call(agent.host, "list_instances", timeout=60)
        n = sum(1 for x in listed if x["power_state"] == 1)
        return n if n >= want else None
    vntest.wait_for(running, timeout=900, interval=1, what="%d guests running" % want)


def bench_memory(rpc, steps):
    agent = test_agent("bench-mem")
    agent.start()
    out = []
    try:
        # the image is downloaded once, before the first figure; the guest goes again
        warm = warm_up(rpc, agent, "mem-warm")
        rpc.call(agent.host, "terminate_instance", timeout=300,
                 instance_uuid=warm["instance"]["uuid"])
        time.sleep(2)
        have = 0
        for want in [0] + steps:
            if want > have:
                build_until(rpc, agent, have, want)
                have = want
            time.sleep(12)  # a capacity check, a heartbeat and a probe ran with them
            priv, rss = memory_kib(agent.proc.pid)
            row = {"guests": want, "private_kib": priv, "rss_kib": rss}
            row.update(heap_kib(agent.metrics()))
            out.append(row)
    finally:
        agent.stop()
    for row in out:
        # the bare program's "idle" is one guest: it holds nothing else
        # the commits per build do not change its memory; 6, as the agent's builds here
        row["bare_private_kib"] = bare_builds(max(row["guests"], 1), 6)[1]
    return out


class Poller:
    """Reads one compute_nodes-like value every 2 ms on a connection of its own and
    records when it first changed to what is awaited."""

    def __init__(self, sql, args):
        self.sql, self.args = sql, args
        self.conn = vntest.db()

    def wait(self, predicate, timeout=10):
        end = time.monotonic() + timeout
        with self.conn.cursor() as cur:
            while time.monotonic() < end:
                cur.execute(self.sql, self.args)
                row = cur.fetchone()
                if row and predicate(row[0]):
                    return time.monotonic()
                time.sleep(0.002)
        raise SystemExit("the row did not change within %d s" % timeout)

    def close(self):
        self.conn.close()


def bench_freshness(rpc, changes):
    agent = test_agent("bench-fresh")
    agent.start()
    lat = []
    try:
        warm_up(rpc, agent, "fresh-warm")
        poll = Poller("SELECT memory_mb_used FROM compute_nodes WHERE host = %s", (agent.host,))
        vntest.wait_for(lambda: vntest.db_query(
            "SELECT memory_mb_used FROM compute_nodes WHERE host = %s", agent.host),
            timeout=60, what="the capacity row")
        time.sleep(1)  # the warm guest's claim written
        base = vntest.db_query("SELECT memory_mb_used FROM compute_nodes WHERE host = %s",
                               agent.host)[0][0]
        guest = None
        for i in range(changes):
            t0 = time.monotonic()
            if guest is None:
                args = vntest.build_args("fresh-%d" % i, memory_mb=64)
                rpc.call(agent.host, "build_and_run_instance", timeout=300, **args)
                guest, want = args["instance"]["uuid"], base + 64
            else:
                rpc.call(agent.host, "terminate_instance", timeout=300, instance_uuid=guest)
                guest, want = None, base
            lat.append(poll.wait(lambda v, w=want: v == w) - t0)
        poll.close()
    finally:
        agent.stop()
    # the baseline: a client's own UPDATE, seen by the same poller
    conn = vntest.db()
    base_lat = []
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_fresh_row")
        cur.execute("CREATE TABLE bench_fresh_row (k integer PRIMARY KEY, v integer)")
        cur.execute("INSERT INTO bench_fresh_row VALUES (1, 0)")
    poll = Poller("SELECT v FROM bench_fresh_row WHERE k = %s", (1,))
    with conn.cursor() as cur:
        for i in range(1, changes + 1):
            t0 = time.monotonic()
            cur.execute("UPDATE bench_fresh_row SET v = %s WHERE k = 1", (i,))
            base_lat.append(poll.wait(lambda v, w=i: v == w) - t0)
        cur.execute("DROP TABLE bench_fresh_row")
    poll.close()
    conn.close()
    return lat, base_lat


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--guests", default="10,100,1000")
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rpc = Rpc()
    try:
        mem = bench_memory(rpc, [int(x) for x in a.guests.split(",")])
        lat, base_lat = bench_freshness(rpc, a.changes)
    finally:
        rpc.close()
    idle, bare_idle = mem[0]["private_kib"], mem[0]["bare_private_kib"]
    for row in mem:
        row["ratio_to_idle"] = round(row["private_kib"] / idle, 3)
        if row["guests"]:
            n = row["guests"]
            row["growth_kib_per_guest"] = round((row["private_kib"] - idle) / n, 1)
            row["bare_growth_kib_per_guest"] = round((row["bare_private_kib"] - bare_idle) / n, 1)
            row["own_kib_per_guest"] = round(row["growth_kib_per_guest"]
                                             - row["bare_growth_kib_per_guest"], 1)
            for k in ("heap_in_use", "heap_free", "sqlite"):
                row[k + "_kib_per_guest"] = round((row[k + "_kib"] - mem[0][k + "_kib"]) / n, 1)
    fresh = {"changes": a.changes,
             "p50_ms": round(statistics.median(lat) * 1000, 1),
             "p90_ms": round(pct(lat, 0.9) * 1000, 1),
             "p99_ms": round(pct(lat, 0.99) * 1000, 1),
             "max_ms": round(max(lat) * 1000, 1),
             "baseline_p50_ms": round(statistics.median(base_lat) * 1000, 2),
             "baseline_p99_ms": round(pct(base_lat, 0.99) * 1000, 2)}
    if a.json:
        print(json.dumps({"bench": "agent", "memory": mem, "capacity_freshness": fresh}))
        return
    print("agent memory on libvirt's test driver, KiB (bare: bench_bare holding as many "
          "guests; per guest: growth over idle)")
    print("  %7s %9s %9s %9s %10s %15s %10s" % ("guests", "private", "rss", "vs idle",
                                                 "per guest", "bare private", "bare per guest",
                                                 ) + " %10s" % "agent's own")
    for row in mem:
        print("  %7d %9d %9d %9.2f %10s %15d %10s %10s"
              % (row["guests"], row["private_kib"], row["rss_kib"], row["ratio_to_idle"],
                 row.get("growth_kib_per_guest", "-"), row["bare_private_kib"],
                 row.get("bare_growth_kib_per_guest", "-"), row.get("own_kib_per_guest", "-")))
    print("the agent's heap (its /metrics), KiB; per guest: growth over idle")
    print("  %7s %9s %9s %9s %10s %10s %10s" % ("guests", "in use", "free", "sqlite",
                                              "in use/g", "free/g", "sqlite/g"))
    for row in mem:
        print("  %7d %9d %9d %9d %10s %10s %10s"
              % (row["guests"], row["heap_in_use_kib"], row["heap_free_kib"], row["sqlite_kib"],
                 row.get("heap_in_use_kib_per_guest", "-"), row.get("heap_free_kib_per_guest", "-"),
                 row.get("sqlite_kib_per_guest", "-")))
    print("capacity row after a change, %d changes (build / terminate), call sent to row "
          "visible" % a.changes)
    print("  p50 %.1f ms  p90 %.1f ms  p99 %.1f ms  max %.1f ms"
          % (fresh["p50_ms"], fresh["p90_ms"], fresh["p99_ms"], fresh["max_ms"]))
    print("  baseline (a client's own UPDATE seen by the same poller): p50 %.2f ms  p99 %.2f ms"
          % (fresh["baseline_p50_ms"], fresh["baseline_p99_ms"]))


if __name__ == "__main__":
    sys.exit(main())
