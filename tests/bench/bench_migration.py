"""Live-migration benchmark, against the services of a harness run (VN_TEST_ENV): two
agents on the two libvirtd hosts with shared instance storage.

For an idle guest and for a guest dirtying memory (the test guest's "dirty" mode), each
round moves a guest booted by virtnode A->B->A with virtnode's live_migration, and a copy
of the same domain (same XML under a new name and uuid, on an overlay of the same base,
not managed by virtnode) A->B->A with a plain `virsh migrate --live --p2p --persistent
--undefinesource`.  Downtime is libvirt's own figure for both (the completed job's
"downtime"); total time is the wall clock from the request to the guest running on the
destination: for virtnode from the live_migration cast until get_migration says
completed, for virsh the command's run time.  Prints medians and ratios, or one JSON line
with --json."""

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time

import libvirt

import vntest
from vntest import Rpc

from bench_build import copy_domain_xml

logging.getLogger("oslo_messaging").setLevel(logging.ERROR)


def virsh(uri, *args):
    r = subprocess.run(["virsh", "-q", "-c", uri] + list(args), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("virsh %s failed: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout


def completed_stats(uri, name):
    """(downtime_ms, elapsed_ms) of the last completed job of @name, as libvirt reports it
    (the destination receives the statistics with the migration)."""
    out = virsh(uri, "domjobinfo", "--completed", name)
    down = re.search(r"Total downtime:\s+(\d+)\s+ms", out)
    took = re.search(r"Time elapsed:\s+(\d+)\s+ms", out)
    if not down or not took:
        raise SystemExit("no completed job statistics for %s:\n%s" % (name, out))
    return int(down.group(1)), int(took.group(1))


def get_migration(rpc, host, u):
    try:
        return rpc.call(host, "get_migration", version="1.1", instance_uuid=u)
    except rpc.om.RemoteError:
        return None


def virtnode_move(rpc, src, dst, u, previous_id):
    t0 = time.monotonic()
    rpc.cast(src.host, "live_migration", version="1.1", instance_uuid=u, dest_host=dst.host,
             block_migration=False)

    def ended():
        m = get_migration(rpc, src.host, u)
        if not m or m["id"] == previous_id:
            return None
        return m if m["status"] in ("completed", "failed", "cancelled", "error") else None
    m = vntest.wait_for(ended, 600, interval=0.05, what="virtnode's migration")
    wall = time.monotonic() - t0
    if m["status"] != "completed":
        raise SystemExit("virtnode's migration of %s ended %s: %s" % (u, m["status"], m["error"]))
    return m["downtime_ms"], wall, m["id"]


def virsh_move(src_uri, dst_uri, name):
    t0 = time.monotonic()
    # --unsafe: the shared folder is a local path to libvirt; virtnode passes the same flag
    # once its probe file proved the storage shared
    virsh(src_uri, "migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--unsafe",
          "--timeout", "300", name, dst_uri)
    wall = time.monotonic() - t0
    down, _ = completed_stats(dst_uri, name)
    return down, wall


def wait_console(path, marker, timeout=120):
    def seen():
        try:
            with open(path, "rb") as f:
                return marker.encode() in f.read()
        except OSError:
            return False
    vntest.wait_for(seen, timeout, what=marker)


def run_kind(rpc, a, b, kind, rounds):
    meta = {"vn.mode": "dirty", "vn.dirty_mb": "48"} if kind == "dirty" else {}
    marker = "VIRTNODE-DIRTY-SEEDED" if kind == "dirty" else "VIRTNODE-HEARTBEAT"
    args = vntest.build_args("bench-mig-" + kind, memory_mb=256, metadata=meta)
    u = args["instance"]["uuid"]
    rpc.call(a.host, "build_and_run_instance", timeout=600, **args)
    wait_console(os.path.join(a.instance_dir(u), "console.log"), marker)
    uri_a, uri_b = vntest.HOSTS["a"][1], vntest.HOSTS["b"][1]
    conn = vntest.virt("a")
    workdir = os.path.join(vntest.ENV["SHARED_DIR"], "bench-virsh-" + kind)
    xml, name = copy_domain_xml(conn.lookupByUUIDString(u).XMLDesc(
        libvirt.VIR_DOMAIN_XML_INACTIVE), workdir)
    conn.defineXML(xml).create()
    conn.close()
    wait_console(os.path.join(workdir, "console.log"), marker)
    vn_down, vn_wall, vs_down, vs_wall = [], [], [], []
    last = None
    try:
        for _ in range(rounds):
            for src, dst, su, du in ((a, b, uri_a, uri_b), (b, a, uri_b, uri_a)):
                d, w, last = virtnode_move(rpc, src, dst, u, last)
                vn_down.append(d)
                vn_wall.append(w)
                d, w = virsh_move(su, du, name)
                vs_down.append(d)
                vs_wall.append(w)
    finally:
        for uri in (uri_a, uri_b):
            subprocess.run(["virsh", "-q", "-c", uri, "destroy", name], capture_output=True)
            subprocess.run(["virsh", "-q", "-c", uri, "undefine", name], capture_output=True)
        subprocess.run(["rm", "-rf", workdir])
        host = a if u in vntest.domain_uuids("a") else b
        rpc.call(host.host, "terminate_instance", timeout=300, instance_uuid=u)
    med = statistics.median
    return {
        "moves": len(vn_down),
        "virtnode_downtime_ms": med(vn_down), "virsh_downtime_ms": med(vs_down),
        "virtnode_total_s": round(med(vn_wall), 3), "virsh_total_s": round(med(vs_wall), 3),
        "downtime_ratio": round(med(vn_down) / max(med(vs_down), 1), 3),
        "total_ratio": round(med(vn_wall) / med(vs_wall), 3),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="A->B->A round trips per guest")
    p.add_argument("--json", action="store_true")
    opts = p.parse_args()
    rpc = Rpc()
    extra = {"log_level": "warning"}
    a = vntest.Agent("a", shared=True, name="bench-mig-a", extra=extra)
    b = vntest.Agent("b", shared=True, name="bench-mig-b", extra=extra)
    a.start(wait=False)
    b.start(wait=False)
    a.wait_ready()
    b.wait_ready()
    try:
        res = {"bench": "migration", "rounds": opts.rounds,
               "idle": run_kind(rpc, a, b, "idle", opts.rounds),
               "dirty": run_kind(rpc, a, b, "dirty", opts.rounds)}
    finally:
        a.stop()
        b.stop()
        rpc.close()
    if opts.json:
        print(json.dumps(res))
        return
    print("live migration, shared storage, 256 MiB guest: virtnode vs virsh migrate --live --p2p")
    print("%-8s %6s %14s %14s %10s %12s %12s %10s" % (
        "guest", "moves", "vn downtime", "virsh downtime", "ratio", "vn total", "virsh total",
        "ratio"))
    for kind in ("idle", "dirty"):
        r = res[kind]
        print("%-8s %6d %11d ms %11d ms %10.3f %10.3f s %10.3f s %10.3f" % (
            kind, r["moves"], r["virtnode_downtime_ms"], r["virsh_downtime_ms"],
            r["downtime_ratio"], r["virtnode_total_s"], r["virsh_total_s"], r["total_ratio"]))


if __name__ == "__main__":
    sys.exit(main())
