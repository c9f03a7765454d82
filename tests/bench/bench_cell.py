"""A simulated cell: N real agents (virtnoded on libvirt's test driver, each with its own
broker connection, queues and database link, the shipped defaults otherwise) against a
3-node RabbitMQ cluster and one PostgreSQL, all on this machine.

    tests/bench/run.sh cell            (BENCH_CELL_HOSTS, default 1000)

It measures, with the cell idle but alive (heartbeats, command-path probes, capacity
checks):
  - the broker: memory of the three nodes and connections, next to the empty cluster;
  - the database: commits/s and the server's CPU over a window, next to Nova's write
    pattern for the same N (bench_report, the same writer code);
  - the agents: CPU and private memory, per agent;
  - ping p50/p99 to a random agent of the cell under that load, next to a raw librabbitmq
    round trip on the same broker (bench_rpc --hosts);
  - a broker node killed and started again: the time until every agent consumes again,
    and how the reconnects spread (the broker's connected_at of every connection);
  - PostgreSQL stopped and started again: the time until every agent's heartbeat row is
    fresh, and how the reconnects spread (pg_stat_activity.backend_start).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import vntest

BIN = os.environ.get("VN_TEST_BIN", os.path.join(vntest.SRC, "build", "bin"))
PREFIX = "cell"


ctl = vntest.cluster_ctl


def broker_memory_mib():
    total = 0
    for n in (1, 2, 3):
        out = ctl(n, "eval", "erlang:memory(total).").strip()
        total += int(out) if out.isdigit() else 0
    return total / 2**20


def broker_connections():
    return [line for line in ctl(1, "list_connections", "connected_at").splitlines() if line]


def consuming():
    """How many cell agents' own queues (compute.cell-NNNN) have a consumer."""
    n = 0
    for line in ctl(1, "list_queues", "name", "consumers").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("compute.%s-" % PREFIX) and parts[1] != "0":
            n += 1
    return n


def pg_pids():
    """The harness PostgreSQL's postmaster and its children."""
    with open(os.path.join(vntest.RUN, "postgres", "data", "postmaster.pid")) as f:
        pm = int(f.readline())
    pids = [pm]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pm:
                        pids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def cpu_s(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/schedstat" % p) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


def private_mib(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            kb = sum(int(line.split()[1]) for line in f
                     if line.startswith(("Private_Clean:", "Private_Dirty:")))
        return kb / 1024
    except OSError:
        return 0.0


def commits():
    return int(vntest.db_query("SELECT sum(xact_commit) FROM pg_stat_database")[0][0])


def spread(times, t0):
    """Reconnects after @t0 (epoch seconds): how many, over how long, the most in any
    one second."""
    after = sorted(t - t0 for t in times if t >= t0)
    if not after:
        return {"n": 0}
    per_s = {}
    for t in after:
        per_s[int(t)] = per_s.get(int(t), 0) + 1
    return {"n": len(after), "first_s": round(after[0], 2), "last_s": round(after[-1], 2),
            "max_per_s": max(per_s.values())}


class Cell:
    def __init__(self, n):
        self.n = n
        self.dir = os.path.join(vntest.RUN, "cell")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.urls = vntest.ENV["CLUSTER_URLS"].split(",")
        self.procs = []

    def host(self, i):
        return "%s-%04d" % (PREFIX, i)

    def start(self, batch=50):
        for i in range(self.n):
            d = os.path.join(self.dir, self.host(i))
            os.makedirs(d)
            urls = self.urls[i % 3:] + self.urls[:i % 3]  # spread over the nodes
            with open(os.path.join(d, "virtnode.conf"), "w") as f:
                f.write("[DEFAULT]\nhost = %s\nstate_path = %s/state\ninstances_path = %s/inst\n"
                        "log_level = warning\n[amqp]\ntransport_url = %s\n[database]\n"
                        "connection = %s\n[libvirt]\nuri = test:///default\n"
                        "require_confinement = false\n[api]\nlisten =\n"
                        % (self.host(i), d, d, ",".join(urls), vntest.ENV["PG_DSN"]))
            log = open(os.path.join(d, "virtnoded.log"), "ab")
            self.procs.append(subprocess.Popen(
                [os.path.join(BIN, "virtnoded"), "--config", os.path.join(d, "virtnode.conf")],
                stdout=log, stderr=subprocess.STDOUT))
            log.close()
            if (i + 1) % batch == 0:
                time.sleep(0.5)

    def alive(self):
        return sum(p.poll() is None for p in self.procs)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_until(cond, timeout, interval=0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return False


def fresh_heartbeats(since_epoch):
    """Agents whose heartbeat row was written after @since_epoch (-1: the database does
    not answer this probe yet)."""
    try:
        return vntest.db_query(
            "SELECT count(*) FROM services WHERE host LIKE %s AND last_seen_up > "
            "to_timestamp(%s)", PREFIX + "-%", since_epoch)[0][0]
    except Exception:  # noqa: BLE001 - any failure to ask is "not yet"
        return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=int(os.environ.get("BENCH_CELL_HOSTS", 1000)))
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--phases", default="idle,ping,broker,db,report",
                    help="what to measure, of idle,ping,broker,db,report")
    args = ap.parse_args()
    n = args.hosts
    phases = args.phases.split(",")
    out = {"bench": "cell", "hosts": n}

    # PostgreSQL with room for the cell, and the cluster
    env = dict(os.environ, PG_MAX_CONNECTIONS=str(n + 200))
    for cmd in ("pg-stop", "pg-start"):
        subprocess.run(["bash", vntest.HARNESS, cmd, vntest.RUN], check=True, env=env)
    vntest.harness("cluster-start")
    vntest.ENV.update(vntest._load_env())
    vntest.db_query("DELETE FROM services WHERE host LIKE %s", PREFIX + "-%")
    out["broker_idle_mib"] = round(broker_memory_mib(), 1)

    cell = Cell(n)
    t0 = time.monotonic()
    try:
        cell.start()
        if not wait_until(lambda: consuming() == n, 900, 2):
            raise SystemExit("only %d of %d agents consume (%d alive)"
                             % (consuming(), n, cell.alive()))
        out["start_s"] = round(time.monotonic() - t0, 1)
        time.sleep(20)  # settle: first capacity rows and probes written

        pg, agents = pg_pids(), [p.pid for p in cell.procs]
    except BaseException:
        cell.stop()
        raise
    try:
        if "idle" in phases:
            measure_idle(out, cell, pg, agents, args.window)
        if "ping" in phases:
            measure_ping(out, cell)
        if "broker" in phases:
            measure_broker_restart(out, n)
        if "db" in phases:
            measure_db_restart(out, n, env)
        out["alive_at_end"] = cell.alive()
    except BaseException:
        print("bench_cell: failed; measured so far: %s" % json.dumps(out), file=sys.stderr)
        raise
    finally:
        cell.stop()
        vntest.db_query("DELETE FROM services WHERE host LIKE %s", PREFIX + "-%")
        vntest.db_query("DELETE FROM compute_nodes WHERE host LIKE %s", PREFIX + "-%")

    if "report" in phases:
        # Nova's write pattern for the same N, through the same writer (bench_report)
        r = subprocess.run([os.path.join(BIN, "bench_report"), "--dsn", vntest.ENV["PG_DSN"],
                            "-n", str(n), "--seconds", str(args.window), "--json"],
                           capture_output=True, text=True, check=True, timeout=1800)
        out["report"] = json.loads(r.stdout.strip().splitlines()[-1])
    vntest.harness("cluster-stop")
    print_results(out, args.json)


def measure_idle(out, cell, pg, agents, window):
    c0, db0, ag0, w0 = commits(), cpu_s(pg), cpu_s(agents), time.monotonic()
    time.sleep(window)
    c1, db1, ag1, w1 = commits(), cpu_s(pg), cpu_s(agents), time.monotonic()
    w = w1 - w0
    out["db_commits_per_s"] = round((c1 - c0) / w, 1)
    out["db_cpu_pct"] = round(100 * (db1 - db0) / w, 2)
    out["agents_cpu_pct"] = round(100 * (ag1 - ag0) / w, 2)
    priv = [private_mib(p) for p in agents]
    out["agent_private_mib_median"] = round(statistics.median(priv), 2)
    out["agents_private_gib"] = round(sum(priv) / 1024, 2)
    out["broker_mib"] = round(broker_memory_mib(), 1)
    out["broker_connections"] = len(broker_connections())


def measure_ping(out, cell):
    """ping to random agents, under that load, next to raw librabbitmq"""
    r = subprocess.run([os.path.join(BIN, "bench_rpc"), "--url", cell.urls[1], "--host",
                        PREFIX, "--hosts", str(cell.n), "-n", "2000", "-c", "8", "--json"],
                       capture_output=True, text=True, check=True, timeout=600)
    out["ping"] = json.loads(r.stdout)


def measure_broker_restart(out, n):
    """a broker node killed, and started again 10 s later"""
    vntest.harness("cluster-kill", "1")
    time.sleep(10)
    vntest.harness("cluster-node-start", "1")
    t_up, e_up = time.monotonic(), time.time()
    ok = wait_until(lambda: consuming() == n, 180, 0.5)
    out["broker_node_restart"] = {
        "all_consuming_s": round(time.monotonic() - t_up, 1) if ok else None,
        "consuming": consuming(),
        "reconnects": spread([int(c) / 1000 for c in broker_connections()
                              if c.strip().isdigit()], e_up - 10),
    }
    if not ok:
        # agents connected whose queue the broker left down: the command-path probe makes
        # the scheduler's query drop exactly these (docs/database.md)
        time.sleep(40)
        down = [line.split()[0] for line in ctl(1, "list_queues", "name", "state").splitlines()
                if line.startswith("compute.%s-" % PREFIX) and line.split()[-1] != "running"]
        stale = vntest.db_query(
            "SELECT host FROM services WHERE host LIKE %s AND "
            "(last_probe_at IS NULL OR last_probe_at < now() - interval '30 seconds')",
            PREFIX + "-%")
        out["broker_node_restart"]["queues_not_running"] = len(down)
        out["broker_node_restart"]["hosts_left_by_probe"] = len(stale)
        out["broker_node_restart"]["probe_matches_queues"] = (
            sorted("compute." + h[0] for h in stale) == sorted(down))


def measure_db_restart(out, n, env):
    """PostgreSQL stopped, and started again 10 s later"""
    subprocess.run(["bash", vntest.HARNESS, "pg-stop", vntest.RUN], check=True, env=env)
    time.sleep(10)
    subprocess.run(["bash", vntest.HARNESS, "pg-start", vntest.RUN], check=True, env=env)
    t_up, e_up = time.monotonic(), time.time()
    ok = wait_until(lambda: fresh_heartbeats(e_up) == n, 300, 1)
    starts = vntest.db_query("SELECT extract(epoch FROM backend_start) FROM "
                             "pg_stat_activity WHERE application_name LIKE %s",
                             "virtnoded " + PREFIX + "-%")
    out["db_restart"] = {
        "all_fresh_s": round(time.monotonic() - t_up, 1) if ok else None,
        "reconnects": spread([float(s[0]) for s in starts], e_up),
    }


def print_results(out, as_json):
    if as_json:
        print(json.dumps(out))
        return
    n = out["hosts"]
    print("a simulated cell of %d agents (test driver), 3-node RabbitMQ, one PostgreSQL"
          % n)
    print("  start: every agent consuming after %.1f s" % out["start_s"])
    if "db_commits_per_s" in out:
        print("  broker: %.0f MiB (empty cluster %.0f MiB), %d connections"
              % (out["broker_mib"], out["broker_idle_mib"], out["broker_connections"]))
        print("  database: %.1f commits/s, server CPU %.2f %% of a core"
              % (out["db_commits_per_s"], out["db_cpu_pct"]))
        print("  agents: CPU %.2f %% of a core in all, private memory %.2f MiB each "
              "(median), %.2f GiB in all" % (out["agents_cpu_pct"],
                                              out["agent_private_mib_median"],
                                              out["agents_private_gib"]))
    if "ping" in out:
        ping = out["ping"]
        print("  ping to a random agent, 8 clients: p50 %.2f ms, p99 %.2f ms "
              "(raw librabbitmq p50 %.2f ms, p99 %.2f ms)"
              % (ping["virtnode"]["p50_ms"], ping["virtnode"]["p99_ms"], ping["raw"]["p50_ms"],
                 ping["raw"]["p99_ms"]))
    if "broker_node_restart" in out:
        b = out["broker_node_restart"]
        print("  broker node killed, 10 s, started: all consuming %s s after it was up; "
              "reconnects %s" % (b["all_consuming_s"], b["reconnects"]))
    if "db_restart" in out:
        d = out["db_restart"]
        print("  PostgreSQL stopped, 10 s, started: all heartbeats fresh %s s after it was "
              "up; reconnects %s" % (d["all_fresh_s"], d["reconnects"]))
    if "report" in out:
        print("  reporting pattern for the same N (bench_report): %s"
              % json.dumps(out["report"]))


if __name__ == "__main__":
    sys.exit(main())
