"""Volume and port benchmark, against the services of a harness run (VN_TEST_ENV), on the
namespaced libvirt host "na" with nfs-ganesha and tgtd in it (QEMU's own NFS and iSCSI
clients: this machine's kernel has neither):

1. attach_volume and detach_volume, caller's time from call to reply, per connector
   (--rounds each), on a running guest;
2. the guest's sequential direct write and read of --mb MiB on an NFS volume, an iSCSI
   volume and, in the same guest and run, its local root overlay (the baseline);
3. build time (call to reply) of a guest with 0, 1 and 4 ports, interleaved rounds, the
   overhead of the ports next to the same build without them.

Prints a table, or one JSON line with --json."""

import argparse
import json
import logging
import os
import statistics
import sys
import time
import uuid as uuidlib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import vntest  # noqa: E402
from test_09_network import port  # noqa: E402
from test_11_volumes import VOLUME_DRIVERS, iscsi_volume, nfs_volume  # noqa: E402

logging.getLogger("oslo_messaging").setLevel(logging.ERROR)


def timed(fn):
    t0 = time.monotonic()
    r = fn()
    return time.monotonic() - t0, r


def iobench(a, u, serial, timeout=300):
    def seen():
        for line in a.console(u).splitlines():
            f = line.split()
            if len(f) == 4 and f[0] == "VIRTNODE-IOBENCH" and f[1] == serial[:20]:
                return int(f[2]), int(f[3])
        return None
    return vntest.wait_for(seen, timeout, interval=0.5, what="the guest's I/O on %s" % serial)


def summary(xs):
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    vntest.start_nethost("na")
    vntest.harness("storage-start", "na")
    vntest.ENV.update(vntest._load_env())
    rpc = vntest.Rpc()
    a = vntest.Agent("na", extra=VOLUME_DRIVERS).start()
    out = {"mb": args.mb, "rounds": args.rounds}
    try:
        # 1 + 2: a guest measuring its local overlay at boot, then each volume it gets
        b = vntest.build_args("bench-vol", metadata={"vn.iobench": str(args.mb)})
        rpc.call(a.host, "build_and_run_instance", timeout=300, **b)
        u = b["instance"]["uuid"]
        local = iobench(a, u, "local")
        path = os.path.join(vntest.ENV["STORAGE_EXPORT_DIR"], "volume-bench.raw")
        with open(path, "wb") as f:
            f.truncate(64 << 20)
        vols = {"nfs (QEMU libnfs)": nfs_volume("volume-bench.raw"),
                "iscsi (QEMU libiscsi, CHAP)": iscsi_volume(1)}
        io = {"local overlay": local}
        times = {}
        for name, v in vols.items():
            att, det = [], []
            for i in range(args.rounds):
                t, _ = timed(lambda: rpc.call(a.host, "attach_volume", version="1.3",
                                              timeout=300, instance_uuid=u, block_device=v))
                att.append(t)
                if i == 0:
                    io[name] = iobench(a, u, v["volume_id"])
                else:
                    vol = v["volume_id"][:20]
                    n = i + 1
                    vntest.wait_for(lambda: a.console(u).count("VOL-READ %s" % vol) +
                                    a.console(u).count("VOL-WROTE %s" % vol) >= n, 60,
                                    what="the guest saw the volume")
                t, _ = timed(lambda: rpc.call(a.host, "detach_volume", version="1.3",
                                              timeout=300, instance_uuid=u,
                                              volume_id=v["volume_id"]))
                det.append(t)
                gone = i + 1
                vid = v["volume_id"][:20]
                vntest.wait_for(lambda: a.console(u).count("VOL-REMOVED %s" % vid) >= gone, 60,
                                what="the guest saw the volume go")
            times[name] = {"attach_s": summary(att), "detach_s": summary(det)}
        rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)
        out["attach_detach"] = times
        out["io"] = {k: {"write_mib_s": args.mb * 1000.0 / max(w, 1),
                         "read_mib_s": args.mb * 1000.0 / max(r, 1)} for k, (w, r) in io.items()}

        # 3: the ports' share of a build, interleaved 0 / 1 / 4 ports per round
        # "1-nofilter": one port without port security (no nwfilter): the filter's share
        builds = {"0": [], "1": [], "1-nofilter": [], "4": []}
        for _ in range(args.rounds):
            for n in builds:
                net = str(uuidlib.uuid4())
                count = int(n.split("-")[0])
                b = vntest.build_args("bench-ports-%s" % n)
                b["networks"] = [port(net, "192.0.2.%d" % (10 + i), security=n == "1" or n == "4")
                                 for i in range(count)]
                t, r = timed(lambda: rpc.call(a.host, "build_and_run_instance", timeout=300,
                                              **b))
                builds[n].append(t)
                rpc.call(a.host, "terminate_instance", timeout=300,
                         instance_uuid=b["instance"]["uuid"])
        base = statistics.median(builds["0"])
        out["build_ports"] = {n: dict(summary(xs), ratio=statistics.median(xs) / base,
                                           overhead_s=statistics.median(xs) - base)
                              for n, xs in builds.items()}
    finally:
        a.stop()
        rpc.close()
        vntest.harness("storage-stop", "na")
        vntest.stop_nethost("na")

    if args.json:
        print(json.dumps(out))
        return
    print("%-30s %12s %12s %12s" % ("connector", "attach p50", "detach p50", "attach max"))
    for name, t in out["attach_detach"].items():
        print("%-30s %11.3fs %11.3fs %11.3fs" % (name, t["attach_s"]["median"],
                                               t["detach_s"]["median"], t["attach_s"]["max"]))
    lw, lr = out["io"]["local overlay"]["write_mib_s"], out["io"]["local overlay"]["read_mib_s"]
    print("\n%-30s %12s %12s %10s %10s" % ("guest I/O (%d MiB, direct)" % args.mb, "write MiB/s",
                                          "read MiB/s", "write x", "read x"))
    for name, r in out["io"].items():
        print("%-30s %12.1f %12.1f %9.2fx %9.2fx" % (name, r["write_mib_s"], r["read_mib_s"],
                                                    r["write_mib_s"] / lw, r["read_mib_s"] / lr))
    print("\n%-30s %12s %12s %10s" % ("build with ports", "median", "overhead", "ratio"))
    for n, r in out["build_ports"].items():
        print("%-30s %11.2fs %11.2fs %9.2fx" % ("%s port(s)" % n, r["median"],
                                                r["overhead_s"], r["ratio"]))


if __name__ == "__main__":
    main()
