"""Build benchmark, against the services of a harness run (VN_TEST_ENV):

1. Message to running domain on a real libvirtd host (QEMU, TCG): the agent's own time
   from receiving build_and_run_instance to the domain running with its security label
   checked (the "done in" line it logs), and the caller's time from sending the call to
   its reply; next to the time libvirt alone
   takes to define and start the same domain XML (new name, uuid and overlay disk on the
   same cached base), in the same run, for each of --rounds guests.  The image is cached
   by a first, separately reported build.
2. Builds per second: --concurrent build calls at once to an agent on libvirt's
   test:///default driver (real image cache, real qcow2 overlays, real journal), from the
   first call sent to the last reply.

Prints a table, or one JSON line with --json."""

import argparse
import concurrent.futures
import json
import logging
import os
import re
import statistics
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


def libvirt_alone(conn, xml, workdir):
    """Defines and starts a copy of @xml (copy_domain_xml); returns the seconds that
    defineXML + create took, then removes the copy."""
    text, _ = copy_domain_xml(xml, workdir)
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
    agent = vntest.Agent("a", shared=True, name="bench-build-qemu",
                         extra={"log_level": "info"})
    agent.start()
    conn = vntest.virt("a")
    try:
        args = vntest.build_args("bench-cold")
        t0 = time.monotonic()
        rpc.call(agent.host, "build_and_run_instance", timeout=600, **args)
        cold = time.monotonic() - t0
        rpc.call(agent.host, "terminate_instance", timeout=300,
                 instance_uuid=args["instance"]["uuid"])
        vn, inside, lv = [], [], []
        for i in range(rounds):
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
            xml = conn.lookupByUUIDString(u).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            lv.append(libvirt_alone(conn, xml, os.path.join(vntest.ENV["SHARED_DIR"],
                                                            "bench-libvirt-%d" % i)))
            rpc.call(agent.host, "terminate_instance", timeout=300, instance_uuid=u)
        return cold, vn, inside, lv
    finally:
        conn.close()
        agent.stop()


def bench_concurrent(rpc, n):
    agent = vntest.Agent("a", shared=False, name="bench-build-test",
                         extra={"log_level": "warning", "libvirt.uri": "test:///default",
                                "libvirt.require_confinement": "false",
                                # the test driver's host (16 CPUs, 3 GiB) made room for
                                # --concurrent small guests
                                "ram_allocation_ratio": "4", "cpu_allocation_ratio": "16"})
    agent.start()
    try:
        # the image is downloaded once, before the clock starts
        warm = vntest.build_args("bench-warm", memory_mb=64)
        rpc.call(agent.host, "build_and_run_instance", timeout=600, **warm)
        calls = [vntest.build_args("bench-c%03d" % i, memory_mb=64) for i in range(n)]

        def one(args):
            return rpc.call(agent.host, "build_and_run_instance", timeout=900, **args)

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
            results = list(ex.map(one, calls))
        wall = time.monotonic() - t0
        bad = [r for r in results if r["vm_state"] != "active"]
        if bad:
            raise SystemExit("%d of %d builds did not end active: %s" % (len(bad), n, bad[0]))
        listed = rpc.call(agent.host, "list_instances", timeout=60)
        running = sum(1 for i in listed if i["power_state"] == 1)
        if running != n + 1:
            raise SystemExit("%d domains running, expected %d" % (running, n + 1))
        return n / wall, wall
    finally:
        agent.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=100)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rpc = Rpc()
    try:
        cold, vn, inside, lv = bench_real(rpc, a.rounds)
        per_s, wall = bench_concurrent(rpc, a.concurrent)
    finally:
        rpc.close()
    res = {
        "bench": "build", "rounds": a.rounds,
        "cold_build_s": round(cold, 3),
        "virtnode_median_s": round(statistics.median(vn), 3),
        "virtnode_receipt_to_running_median_s": round(statistics.median(inside), 3),
        "libvirt_median_s": round(statistics.median(lv), 3),
        "ratio": round(statistics.median(inside) / statistics.median(lv), 3),
        "ratio_round_trip": round(statistics.median(vn) / statistics.median(lv), 3),
        "concurrent": a.concurrent, "concurrent_wall_s": round(wall, 3),
        "builds_per_s": round(per_s, 2),
    }
    if a.json:
        print(json.dumps(res))
        return
    print("build_and_run_instance on a real libvirtd host (QEMU TCG), cached image, %d rounds"
          % a.rounds)
    print("  first build (image download included)       %8.3f s" % cold)
    print("  virtnode: message received to guest running  %8.3f s median  (%s)"
          % (statistics.median(inside), ", ".join("%.3f" % x for x in inside)))
    print("  virtnode: call sent to reply received        %8.3f s median  (%s)"
          % (statistics.median(vn), ", ".join("%.3f" % x for x in vn)))
    print("  libvirt alone: defineXML + create, same XML  %8.3f s median  (%s)"
          % (statistics.median(lv), ", ".join("%.3f" % x for x in lv)))
    print("  ratio virtnode (receipt to running)/libvirt  %8.3f" % res["ratio"])
    print("  ratio virtnode (round trip)/libvirt          %8.3f" % res["ratio_round_trip"])
    print("%d concurrent builds on libvirt's test driver: %.2f builds/s (%.2f s in all)"
          % (a.concurrent, per_s, wall))


if __name__ == "__main__":
    sys.exit(main())
