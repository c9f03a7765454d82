"""Where an agent's heap goes per guest, against the services of a harness run
(VN_TEST_ENV).

An agent on libvirt's test:///default driver runs under valgrind's massif heap profiler.
After one warm-up build (the image downloaded, the guest gone), massif takes a detailed
snapshot of the live heap (every allocation site with its bytes and call stack); then
--guests guests are built, and 15 s later (a capacity check, a heartbeat and a probe have
run) a second one.  The growth between the two, per guest, is split by who allocated it:

- libvirt: every allocation with libvirt in its stack.  On the test driver this is the
  driver's own copy of each domain (it runs inside the agent's process); on a real host
  those live in libvirtd, not in the agent.
- SQLite: the journal's page cache and statements.
- the agent's own, by the agent's function nearest the allocation, or by library when
  no agent function is in the stack (GLib's, json-c's, ...).
- sites below massif's threshold (--threshold, % of the heap), whose owner it does not
  record.

massif counts the bytes asked of malloc; the allocator's own overhead and the memory it
holds free are not in it (bench_agent.py reports those from the agent's /metrics).
Prints a table, or one JSON line with --json."""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import vntest
from bench_agent import build_until
from bench_build import warm_up
from vntest import Rpc

NODE = re.compile(r"^( *)n(\d+): (\d+) (.*)$")
FUNC = re.compile(r": (\S+) \(")


def leaves(text):
    """[(bytes, [frame descriptions from the allocator down to main])] of a detailed
    massif snapshot: its leaf nodes, each with the stack that led to it."""
    out, stack, tree = [], [], False
    for line in text.splitlines():
        if line.startswith("heap_tree="):
            tree = True
            continue
        m = NODE.match(line) if tree else None
        if not m:
            continue
        depth = len(m[1])
        stack = stack[:depth] + [m[4]]
        if int(m[2]) == 0:
            out.append((int(m[3]), list(stack)))
    return out


def owner(stack):
    frames = stack[1:]  # the first is massif's "(heap allocation functions)"
    text = " ".join(frames)
    if "below massif's threshold" in frames[-1]:
        return "sites below the threshold"
    if "libvirt.so" in text:
        return "libvirt"
    if "libsqlite3" in text:
        return "SQLite (the journal)"
    for f in frames:
        if "virtnoded" in f or "/build/bin/" in f or re.search(r"\(\w+\.c:\d+\)", f):
            m = FUNC.search(f)
            return "agent: " + (m[1] if m else f)
    lib = re.search(r"\(in \S*/(lib[^/.]+)", frames[-1] if frames else "")
    return "agent: in " + (lib[1] if lib else "?")


def breakdown(before, after):
    grow = collections.Counter()
    for b, st in leaves(after):
        grow[owner(st)] += b
    for b, st in leaves(before):
        grow[owner(st)] -= b
    return grow


def snapshot(pid, path):
    r = subprocess.run(["vgdb", "--pid=%d" % pid, "detailed_snapshot", path],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not os.path.exists(path):
        raise SystemExit("vgdb detailed_snapshot failed: " + r.stderr)
    with open(path) as f:
        return f.read()


def massif_pid(out_file):
    found = subprocess.run(["pgrep", "-f", "massif-out-file=" + out_file],
                           capture_output=True, text=True).stdout.split()
    if not found:
        raise SystemExit("the agent under massif is not running")
    return int(found[0])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--guests", type=int, default=200)
    p.add_argument("--threshold", type=float, default=0.1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="vn-heap-")
    out_file = os.path.join(tmp, "massif.out")
    rpc = Rpc()
    agent = vntest.Agent("a", shared=False, name="bench-heap",
                         extra={"log_level": "warning", "libvirt.uri": "test:///default",
                                "libvirt.require_confinement": "false",
                                "ram_allocation_ratio": "32", "cpu_allocation_ratio": "64",
                                "disk_allocation_ratio": "100"},
                         wrapper=["valgrind", "--tool=massif", "--vgdb=yes",
                                  "--vgdb-error=999999", "--massif-out-file=" + out_file,
                                  "--threshold=%g" % a.threshold])
    agent.start()
    try:
        warm = warm_up(rpc, agent, "heap-warm")
        rpc.call(agent.host, "terminate_instance", timeout=300,
                 instance_uuid=warm["instance"]["uuid"])
        time.sleep(3)
        pid = massif_pid(out_file)
        before = snapshot(pid, os.path.join(tmp, "before.txt"))
        build_until(rpc, agent, 0, a.guests)
        time.sleep(15)
        after = snapshot(pid, os.path.join(tmp, "after.txt"))
    finally:
        agent.stop()
        rpc.close()
    grow = breakdown(before, after)
    total = sum(grow.values())
    rows = sorted(((k, v / a.guests / 1024) for k, v in grow.items()), key=lambda r: -r[1])
    if a.json:
        print(json.dumps({"bench": "heap", "guests": a.guests,
                          "growth_kib_per_guest": round(total / a.guests / 1024, 2),
                          "by_owner_kib_per_guest": {k: round(v, 2) for k, v in rows}}))
        return
    print("live heap growth per guest with %d guests on libvirt's test driver (massif): "
          "%.1f KiB" % (a.guests, total / a.guests / 1024))
    for k, v in rows:
        if abs(v) >= 0.05:
            print("  %8.2f KiB  %s" % (v, k))


if __name__ == "__main__":
    sys.exit(main())
