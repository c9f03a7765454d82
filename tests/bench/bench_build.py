"""Build benchmark, against the services of a harness run (VN_TEST_ENV):

1. Message to running domain on a real libvirtd host (QEMU, TCG): the agent's own time
   from receiving build_and_run_instance to the domain running with its security label
   checked (the "done in" line it logs), and the caller's time from sending the call to
   its reply; next to the time libvirt alone takes to define and start the same domain
   XML (new name, uuid and overlay disk on the same cached base).  Agent and libvirt
   alternate round by round (--rounds), so a drift of the machine weighs on both; the
   ratio is the median of the rounds' ratios, with its range.  The image is cached by a
   first, separately reported build.
2. Builds per second: --concurrent build_and_run_instance casts (as Nova's conductor
   sends them) published at once to an agent on libvirt's test:///default driver (real
   image cache, real qcow2 overlays, real journal), from the first cast sent to the last
   build done, and within the agent from the first receipt to the last build done; next to a bare program (bench_bare) doing the same steps for as many
   guests with the same concurrency (max_concurrent_builds): a qcow2 overlay on the same
   image written by the agent's own in-process writer, a domain defined and started on its
   own test:///default connection, and as many durable SQLite commits as the agent's
   journal makes for a build, flushed as the journal flushes them (to the WAL, then an
   fdatasync of the WAL that commits made together share); and a second bare program
   whose commits each flush on their own, under its database's lock.  The three alternate,
   --batches times each, and so does a fourth pair on one core each: the agent on the
   machine's last core with the services it talks to (RabbitMQ, PostgreSQL) and this
   benchmark's own process on the others, then the bare program (grouped flushes) on that
   same last core, so that each program's builds/s is what one core gives it and the
   broker's, the database's and the caster's CPU is not taken from it.  Then the scale
   curve (--curve): 1, 8, 32 and 128 builds at once, one batch each, next to the bare
   program with as many.

Prints a table, or one JSON line with --json."""

import argparse
import datetime
import json
import logging
import os
import re
import resource
import statistics
import tempfile
import subprocess
import sys
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt

import vntest
from vntest import Rpc

logging.getLogger("oslo_messaging").setLevel(logging.ERROR)

def copy_domain_xml(xml, workdir):
    """@xml under a new name and uuid, without virtnode's metadata (so no agent adopts it),
    its disks replaced by overlays in @workdir on the same bases and its console log
    there too.  Returns (xml, name)."""
    root = ET.fromstring(xml)
    new_uuid = str(uuidlib.uuid4())
    name = "bench-libvirt-" + new_uuid[:8]
    root.find("uuid").text = new_uuid
    root.find("name").text = name
    md = root.find("metadata")
    if md is not None:
        root.remove(md)
    os.makedirs(workdir, exist_ok=True)
    for disk in root.iter("disk"):
        src = disk.find("source")
        if src is None or "file" not in src.attrib:
            continue
        old = src.attrib["file"]
        info = json.loads(subprocess.check_output(
            ["qemu-img", "info", "--output=json", "-U", old]))
        new = os.path.join(workdir, os.path.basename(old))
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if info.get("backing-filename"):
            cmd += ["-b", info["full-backing-filename"], "-F", "qcow2"]
        cmd += [new, str(info["virtual-size"])]
        subprocess.check_call(cmd)
        src.attrib["file"] = new
    for tag in ("serial", "console"):
        for dev in root.iter(tag):
            src = dev.find("source")
            if src is not None and "path" in src.attrib:
                src.attrib["path"] = os.path.join(workdir, "console.log")
    for entry in root.iter("entry"):
        if entry.attrib.get("name") in ("uuid", "serial"):
            entry.text = new_uuid
    return ET.tostring(root, encoding="unicode"), name


def libvirt_alone(conn, copy):
    """Defines and starts @copy, (xml, workdir) from copy_domain_xml; returns the seconds
    that defineXML + create took, then removes the copy."""
    text, workdir = copy
    t0 = time.monotonic()
    dom = conn.defineXML(text)
    dom.create()
    took = time.monotonic() - t0
    dom.destroy()
    dom.undefine()
    subprocess.check_call(["rm", "-rf", workdir])
    return took


def agent_took(agent, request_id):
    """The agent's own time from receiving the request to the guest running, from the line
    it logs when the operation is done."""
    m = re.search(r"build_and_run_instance done in ([0-9.]+) s \[request_id=%s"
                  % re.escape(request_id), agent.log_text())
    if not m:
        raise SystemExit("no 'done in' line for %s in the agent's log" % request_id)
    return float(m.group(1))


def bench_real(rpc, rounds):
    """Alternates the agent's builds and libvirt's define + start of the same XML, in the
    order AB, BA, AB...; each guest measured is the only one running."""
    agent = vntest.Agent("a", shared=True, name="bench-build-qemu",
                         extra={"log_level": "info"})
    agent.start()
    conn = vntest.virt("a")
    try:
        args = vntest.build_args("bench-cold")
        t0 = time.monotonic()
        rpc.call(agent.host, "build_and_run_instance", timeout=600, **args)
        cold = time.monotonic() - t0
        vn, inside, lv = [], [], []
        serial = [0]

        def copy_then_terminate(u):
            """Two copies of guest @u for libvirt alone (each with its own overlays, made
            now, untimed), for this round and the next; then the guest goes."""
            xml = conn.lookupByUUIDString(u).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            copies = []
            for _ in range(2):
                serial[0] += 1
                workdir = os.path.join(vntest.ENV["SHARED_DIR"], "bench-libvirt-%d" % serial[0])
                copies.append((copy_domain_xml(xml, workdir)[0], workdir))
            rpc.call(agent.host, "terminate_instance", timeout=300, instance_uuid=u)
            return copies

        copies = copy_then_terminate(args["instance"]["uuid"])

        def agent_round(i):
            args = vntest.build_args("bench-%d" % i)
            u = args["instance"]["uuid"]
            rid = "req-" + str(uuidlib.uuid4())
            t0 = time.monotonic()
            r = rpc.call(agent.host, "build_and_run_instance", timeout=600,
                         ctx={"request_id": rid}, **args)
            vn.append(time.monotonic() - t0)
            inside.append(agent_took(agent, rid))
            if r["vm_state"] != "active":
                raise SystemExit("build %s ended %s" % (u, r["vm_state"]))
            return copy_then_terminate(u)

        for i in range(rounds):
            if i % 2 == 0:
                for c in copies:
                    subprocess.check_call(["rm", "-rf", c[1]])
                copies = agent_round(i)
                lv.append(libvirt_alone(conn, copies.pop()))
            else:
                lv.append(libvirt_alone(conn, copies.pop()))
                copies = agent_round(i)
        for c in copies:
            subprocess.check_call(["rm", "-rf", c[1]])
        return cold, vn, inside, lv
    finally:
        conn.close()
        agent.stop()


def spread(xs):
    """(median, p25, p75) of @xs."""
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return statistics.median(xs), q[0], q[2]




def bare_base():
    """The image the agents build from (the file the image server serves), as the bare
    program's cached base."""
    vntest.publish_image()
    return os.path.join(vntest.RUN, "images", "guest.qcow2")


def bare_builds(n, commits, workers=10, flush_each=False, cpus=None):
    """The bare program (bench_bare): @n builds, @workers at a time (the agent's
    max_concurrent_builds), each with @commits durable commits (as many as the agent's
    journal made per build); with @flush_each, each commit flushes on its own.  Returns
    (the seconds they took, its private memory in KiB once they are done, its flushes per
    build, its CPU milliseconds per build).  With @cpus, it runs on those CPUs only."""
    workdir = tempfile.mkdtemp(prefix="bench-bare-", dir=vntest.ENV["PRIVATE_DIR"])
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.check_output(
            [os.path.join(vntest.BIN, "bench_bare"), "--base", bare_base(), "--dir", workdir,
             "-n", str(n), "-w", str(workers), "--commits", str(commits)]
            + (["--flush-each"] if flush_each else []), text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None).split()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000 / n
        return float(out[0]), int(out[2]), float(out[3]), cpu
    finally:
        subprocess.check_call(["rm", "-rf", workdir])


def agent_window(agent, n):
    """(first receipt, last build done) of the last @n builds, in wall-clock seconds, from
    the agent's log (each "done in" line carries its time and the build's duration); None
    while fewer than @n are done."""
    starts, ends = [], []
    for m in re.finditer(r"^(\S+)Z INFO .*build_and_run_instance done in ([0-9.]+) s",
                         agent.log_text(), re.M):
        end = datetime.datetime.fromisoformat(m.group(1) + "+00:00").timestamp()
        ends.append(end)
        starts.append(end - float(m.group(2)))
    if len(ends) < n:
        return None
    return min(starts[-n:]), max(ends[-n:])


def test_agent(name, log_level="warning"):
    return vntest.Agent("a", shared=False, name=name,
                        extra={"log_level": log_level, "libvirt.uri": "test:///default",
                               "libvirt.require_confinement": "false",
                               # the test driver's host (16 CPUs, 3 GiB) made room for many
                               # small guests
                               "ram_allocation_ratio": "32", "cpu_allocation_ratio": "64",
                               "disk_allocation_ratio": "100"})


def warm_up(rpc, agent, name):
    """One build, so that the image is downloaded before anything is measured; returns its
    arguments."""
    args = vntest.build_args(name, memory_mb=64)
    rpc.call(agent.host, "build_and_run_instance", timeout=600, **args)
    return args


def journal_flushes(agent):
    return int(agent.metric("virtnode_journal_flushes_total"))


def journal_durable(agent):
    return int(agent.metric("virtnode_journal_durable_writes_total"))


TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_part(agent_pid):
    """CPU seconds used so far by the agent's process, the broker (RabbitMQ's Erlang VM),
    PostgreSQL's processes and this benchmark's own process (which casts the builds as
    the conductor would), and by the whole machine (from /proc/stat)."""
    out = {"virtnode": 0.0, "broker": 0.0, "postgresql": 0.0}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        fields = st.rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / TICK
        if int(d) == agent_pid:
            out["virtnode"] += used
        elif comm in ("beam.smp", "erl_child_setup", "inet_gethost", "epmd"):
            out["broker"] += used
        elif comm == "postgres":
            out["postgresql"] += used
    t = os.times()
    out["caster"] = t.user + t.system
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    out["machine"] = (sum(v) - v[3] - v[4]) / TICK
    return out


SERVICES = ("beam.smp", "erl_child_setup", "inet_gethost", "epmd", "postgres")


def set_affinity(pid, cpus):
    """Every thread of process @pid on @cpus (threads it starts later inherit it)."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that has just ended


def services_on(cpus):
    """The broker's and PostgreSQL's processes and this process on @cpus."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % d) as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in SERVICES:
            set_affinity(int(d), cpus)
    set_affinity(os.getpid(), cpus)


ALL_CPUS = sorted(os.sched_getaffinity(0))
# one core for the program measured, the others for the services and the caster
OWN_CORE = {ALL_CPUS[-1]} if len(ALL_CPUS) > 1 else None
OTHER_CORES = set(ALL_CPUS[:-1]) if len(ALL_CPUS) > 1 else None


def agent_builds(rpc, name, n, own_core=False):
    """@n build_and_run_instance casts, as Nova's conductor sends them, published at once
    to a new agent on the test driver.  Returns (seconds from the first cast sent to the
    last build done, seconds from the first receipt to the last build done, flushes of the
    journal's log per build, its durable writes per build, and the CPU milliseconds per
    build each part used from the first cast to the end of the wait, see cpu_by_part).
    With @own_core, the agent runs on OWN_CORE and the services and this process on the
    other cores (after the warm-up build)."""
    agent = test_agent(name, log_level="info")
    agent.start()
    try:
        warm_up(rpc, agent, "bench-warm")
        if own_core:
            services_on(OTHER_CORES)
            set_affinity(agent.proc.pid, OWN_CORE)
        flushes0 = journal_flushes(agent)
        durable0 = journal_durable(agent)
        casts = [vntest.build_args("bench-c%03d" % i, memory_mb=64) for i in range(n)]
        cpu0 = cpu_by_part(agent.proc.pid)
        t0 = time.time()
        for args in casts:
            rpc.cast(agent.host, "build_and_run_instance", **args)
        vntest.wait_for(lambda: agent_window(agent, n + 1), timeout=600,
                        what="%d builds done" % n)
        cpu1 = cpu_by_part(agent.proc.pid)
        listed = rpc.call(agent.host, "list_instances", timeout=60)
        running = sum(1 for i in listed if i["power_state"] == 1)
        if running != n + 1:
            raise SystemExit("%d domains running, expected %d" % (running, n + 1))
        first, last = agent_window(agent, n)
        return (last - t0, last - first, (journal_flushes(agent) - flushes0) / n,
                round((journal_durable(agent) - durable0) / n),
                {k: (cpu1[k] - cpu0[k]) * 1000 / n for k in cpu0})
    finally:
        if own_core:
            services_on(set(ALL_CPUS))
        agent.stop()


def bench_concurrent(rpc, n, batches):
    """Agent batches and bare batches, alternating.  Returns lists of builds/s: the agent
    from the first cast, the agent within itself, the bare program; and the agent's
    journal flushes per build, the bare program's, the builds/s of the bare program
    flushing each commit, and the agent's durable writes per build (the bare program's
    commits per build, batch by batch)."""
    vn, inside, bare, flushes, bare_flushes, each, durable = [], [], [], [], [], [], []
    cpu, bare_cpu = [], []
    own = {"virtnode": [], "bare": [], "virtnode_cpu": [], "bare_cpu": []}
    for i in range(batches):
        wall, window, f, d, c = agent_builds(rpc, "bench-build-test-%d" % i, n)
        vn.append(n / wall)
        inside.append(n / window)
        flushes.append(f)
        durable.append(d)
        cpu.append(c)
        took, _, bf, bc = bare_builds(n, d)
        bare.append(n / took)
        bare_flushes.append(bf)
        bare_cpu.append(bc)
        each.append(n / bare_builds(n, d, flush_each=True)[0])
        if OWN_CORE:
            wall, _, _, d, c = agent_builds(rpc, "bench-build-core-%d" % i, n, own_core=True)
            own["virtnode"].append(n / wall)
            own["virtnode_cpu"].append(c["virtnode"])
            took, _, _, bc = bare_builds(n, d, cpus=OWN_CORE)
            own["bare"].append(n / took)
            own["bare_cpu"].append(bc)
    return vn, inside, bare, flushes, bare_flushes, each, durable, cpu, bare_cpu, own


def bench_curve(rpc, sizes):
    """Builds/s with 1, 8, 32, 128... builds published at once (one batch each), next to
    the bare programs with as many.  Returns [(builds, virtnode/s, bare/s, bare flushing
    each commit/s)]."""
    out = []
    for n in sizes:
        wall, _, _, d, _ = agent_builds(rpc, "bench-build-curve-%d" % n, n)
        out.append((n, n / wall, n / bare_builds(n, d)[0],
                    n / bare_builds(n, d, flush_each=True)[0]))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--concurrent", type=int, default=100)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--curve", default="1,8,32,128",
                   help="builds at once for the scale curve (comma-separated; empty: none)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rpc = Rpc()
    try:
        cold, vn, inside, lv = bench_real(rpc, a.rounds)
        (c_vn, c_inside, c_bare, c_flushes, c_bare_flushes, c_each, c_durable, c_cpu,
         c_bare_cpu, own) = bench_concurrent(rpc, a.concurrent, a.batches)
        curve = bench_curve(rpc, [int(x) for x in a.curve.split(",") if x])
    finally:
        rpc.close()
    ratios = [i / l for i, l in zip(inside, lv)]
    ratios_rt = [v / l for v, l in zip(vn, lv)]
    own_ratios = [v / b for v, b in zip(own["virtnode"], own["bare"])]
    c_ratios = [v / b for v, b in zip(c_vn, c_bare)]
    c_ratios_inside = [v / b for v, b in zip(c_inside, c_bare)]
    c_ratios_each = [v / b for v, b in zip(c_vn, c_each)]
    parts = ("virtnode", "broker", "postgresql", "caster", "machine")
    cpu = {k: [c[k] for c in c_cpu] for k in parts}
    cpu_ratios = [c["virtnode"] / b for c, b in zip(c_cpu, c_bare_cpu)]
    # the CPU two cores give a build at the agent's rate, left idle or used
    cpu_offered = [2000.0 / v for v in c_vn]

    def fig(xs):
        m, q1, q3 = spread(xs)
        return {"median": round(m, 3), "p25": round(q1, 3), "p75": round(q3, 3),
                "min": round(min(xs), 3), "max": round(max(xs), 3)}

    res = {
        "bench": "build", "rounds": a.rounds,
        "cold_build_s": round(cold, 3),
        "virtnode_receipt_to_running_s": fig(inside),
        "virtnode_round_trip_s": fig(vn),
        "libvirt_s": fig(lv),
        "ratio": fig(ratios),
        "ratio_round_trip": fig(ratios_rt),
        "concurrent": a.concurrent, "batches": a.batches,
        "builds_per_s": fig(c_vn),
        "builds_per_s_inside_agent": fig(c_inside),
        "bare_builds_per_s": fig(c_bare),
        "builds_ratio": fig(c_ratios),
        "builds_ratio_inside_agent": fig(c_ratios_inside),
        "journal_flushes_per_build": fig(c_flushes),
        "journal_durable_writes_per_build": c_durable,
        "bare_flushes_per_build": fig(c_bare_flushes),
        "bare_flush_each_builds_per_s": fig(c_each),
        "builds_ratio_flush_each": fig(c_ratios_each),
        "cpu_ms_per_build": {k: fig(v) for k, v in cpu.items()},
        "bare_cpu_ms_per_build": fig(c_bare_cpu),
        "cpu_ratio": fig(cpu_ratios),
        "own_core": {"builds_per_s": fig(own["virtnode"]),
                     "bare_builds_per_s": fig(own["bare"]),
                     "builds_ratio": fig(own_ratios),
                     "cpu_ms_per_build": fig(own["virtnode_cpu"]),
                     "bare_cpu_ms_per_build": fig(own["bare_cpu"])} if own_ratios else None,
        "curve": [{"builds": n, "builds_per_s": round(v, 1), "bare_builds_per_s": round(b, 1),
                   "ratio": round(v / b, 3), "bare_flush_each_builds_per_s": round(e, 1),
                   "ratio_flush_each": round(v / e, 3)} for n, v, b, e in curve],
    }
    if a.json:
        print(json.dumps(res))
        return

    def line(label, xs, unit):
        m, q1, q3 = spread(xs)
        print("  %-46s %8.3f%s  (p25 %.3f, p75 %.3f, range %.3f-%.3f)"
              % (label, m, unit, q1, q3, min(xs), max(xs)))

    print("build_and_run_instance on a real libvirtd host (QEMU TCG), cached image, %d "
          "interleaved rounds (medians)" % a.rounds)
    print("  %-46s %8.3f s" % ("first build (image download included)", cold))
    line("virtnode: message received to guest running", inside, " s")
    line("virtnode: call sent to reply received", vn, " s")
    line("libvirt alone: defineXML + create, same XML", lv, " s")
    line("ratio virtnode (receipt to running)/libvirt", ratios, "  ")
    line("ratio virtnode (round trip)/libvirt", ratios_rt, "  ")
    print("%d concurrent builds on libvirt's test driver, %d alternating batches"
          % (a.concurrent, a.batches))
    line("virtnode: first cast sent to last build done", c_vn, "/s")
    line("virtnode: first receipt to last build done", c_inside, "/s")
    line("bare program: the same steps, flushes grouped", c_bare, "/s")
    line("bare program: each commit flushed on its own", c_each, "/s")
    line("ratio virtnode (cast to done)/bare", c_ratios, "  ")
    line("ratio virtnode (inside)/bare", c_ratios_inside, "  ")
    line("ratio virtnode (cast to done)/bare flushing each", c_ratios_each, "  ")
    print("  %-46s %s" % ("virtnode: durable writes per build (the bare's)",
                              ", ".join(str(d) for d in c_durable)))
    line("virtnode: journal flushes per build", c_flushes, "  ")
    line("bare program: flushes per build", c_bare_flushes, "  ")
    print("  CPU per build, ms (from the first cast to the end of the wait)")
    line("  virtnode's process", cpu["virtnode"], "  ")
    line("  bare program", c_bare_cpu, "  ")
    line("  ratio virtnode/bare", cpu_ratios, "  ")
    line("  the broker, during virtnode's batches", cpu["broker"], "  ")
    line("  PostgreSQL, same", cpu["postgresql"], "  ")
    line("  the caster (this benchmark), same", cpu["caster"], "  ")
    line("  whole machine, same", cpu["machine"], "  ")
    line("  two cores at virtnode's rate", cpu_offered, "  ")
    if own_ratios:
        print("  each on one core (CPU %d), the services and the caster on the others"
              % min(OWN_CORE))
        line("virtnode: first cast sent to last build done", own["virtnode"], "/s")
        line("bare program: flushes grouped", own["bare"], "/s")
        line("ratio virtnode/bare, each on one core", own_ratios, "  ")
        line("virtnode's CPU per build, ms", own["virtnode_cpu"], "  ")
        line("bare program's CPU per build, ms", own["bare_cpu"], "  ")
    if curve:
        print("scale curve: builds published at once (one batch each), builds/s")
        print("  %8s %10s %10s %8s %12s %8s" % ("builds", "virtnode", "bare", "ratio",
                                               "flush each", "ratio"))
        for n, v, b, e in curve:
            print("  %8d %10.1f %10.1f %8.3f %12.1f %8.3f" % (n, v, b, v / b, e, v / e))


if __name__ == "__main__":
    sys.exit(main())
