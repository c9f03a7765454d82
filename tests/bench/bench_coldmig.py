"""Cold-migration benchmark, against the services of a harness run (VN_TEST_ENV): two
agents on the two libvirtd hosts, each with instance storage of its own (nothing shared),
so the root disk travels over the destination's libvirt connection (storage streams).

Each round builds a guest, stops it and fills its root overlay with 1 GiB of data
(qemu-io), then, in alternating order: virtnode moves it A->B (resize_instance with the
same flavor, timed from the call to its reply: the destination's claim, the disk's
transfer, the domain defined there), and `cp` copies the same file from A's instance
folder to B's (the same source and target file systems, on the same machine).  The
resize is confirmed and the guest deleted before the next round.  Prints the medians and
their ratio, or one JSON line with --json."""

import argparse
import json
import logging
import os
import statistics
import subprocess
import time

import vntest

logging.getLogger("oslo_messaging").setLevel(logging.ERROR)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gib", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rpc = vntest.Rpc()
    a = vntest.Agent("a", shared=False).start()
    b = vntest.Agent("b", shared=False).start()
    cp_s, mig_s, sizes = [], [], []
    try:
        for rnd in range(args.rounds):
            spec = vntest.build_args("bench-cold-%d" % rnd, root_gb=args.gib + 1)
            u = spec["instance"]["uuid"]
            rpc.call(a.host, "build_and_run_instance", timeout=300, **spec)
            rpc.call(a.host, "stop_instance", timeout=120, instance_uuid=u, clean_shutdown=False)
            disk = os.path.join(a.instance_dir(u), "disk")
            # inside host A's namespace, where the overlay's backing path is
            w = subprocess.run(["bash", vntest.HARNESS, "ns", vntest.RUN, "a", "qemu-io", "-f",
                                "qcow2", "-c", "write -P 0x5a 0 %dG" % args.gib,
                                os.path.join(a.instances, u, "disk")],
                               capture_output=True, text=True)
            if w.returncode != 0:
                raise SystemExit("qemu-io: %s%s" % (w.stdout, w.stderr))
            sizes.append(os.path.getsize(disk))
            target = os.path.join(vntest.RUN, "hosts", "b", "private", "bench-cp-%d" % rnd)

            def copy():
                # after the move the same file waits, set aside, for the confirm
                src = disk if os.path.exists(disk) else os.path.join(
                    a.instance_dir(u) + "_resize", "disk")
                t0 = time.monotonic()
                subprocess.run(["cp", src, target], check=True)
                cp_s.append(time.monotonic() - t0)
                os.unlink(target)

            def move():
                t0 = time.monotonic()
                r = rpc.call(a.host, "resize_instance", version="1.4", timeout=1800,
                             instance_uuid=u, dest_host=b.host)
                mig_s.append(time.monotonic() - t0)
                assert r["vm_state"] == "resized" and r["host"] == b.host, r

            for step in ((copy, move) if rnd % 2 == 0 else (move, copy)):
                step()
            rpc.call(b.host, "confirm_resize", version="1.4", timeout=300, instance_uuid=u)
            rpc.call(b.host, "terminate_instance", timeout=300, instance_uuid=u)
    finally:
        a.stop()
        b.stop()
        rpc.close()
    out = {"rounds": args.rounds, "disk_bytes": statistics.median(sizes),
           "cp_s": statistics.median(cp_s), "cold_migration_s": statistics.median(mig_s)}
    out["ratio"] = out["cold_migration_s"] / out["cp_s"]
    out["cold_migration_mib_s"] = out["disk_bytes"] / out["cold_migration_s"] / (1 << 20)
    out["cp_mib_s"] = out["disk_bytes"] / out["cp_s"] / (1 << 20)
    if args.json:
        print(json.dumps(out))
        return
    print("cold migration of a %.2f GiB root disk, no shared storage (%d rounds, medians)" %
          (out["disk_bytes"] / (1 << 30), args.rounds))
    print("  cp of the same file            %6.2f s  %7.1f MiB/s  (range %.2f-%.2f)" %
          (out["cp_s"], out["cp_mib_s"], min(cp_s), max(cp_s)))
    print("  resize_instance A->B           %6.2f s  %7.1f MiB/s  (range %.2f-%.2f)" %
          (out["cold_migration_s"], out["cold_migration_mib_s"], min(mig_s), max(mig_s)))
    print("  ratio                          %6.2f" % out["ratio"])


if __name__ == "__main__":
    main()
