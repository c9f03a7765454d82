"""Fault: kill -9 of the agent at 20 random moments while builds, deletes and power
operations are in flight, each followed by a restart.  After every restart: each instance
is settled (no task left), its record agrees with libvirt, no domain or folder is
orphaned, and no request was applied twice.  (kill -9 during an outgoing and an incoming
live migration: tests/integration/test_05_migration.py, source and destination agent
killed.)"""

import os
import random
import time
import unittest
import uuid as uuidlib

import vntest

ROUNDS = 20


class Kill9(vntest.AgentTestCase):
    def settle(self, a, uuids):
        """Waits until no instance has a task, then checks each against libvirt."""
        def settled():
            out = {}
            for u in uuids:
                try:
                    r = self.rpc.call("host-a", "get_instance", timeout=30, instance_uuid=u)
                except self.rpc.om.RemoteError as e:
                    if e.exc_type != "InstanceNotFound":
                        raise
                    r = None
                if r and r["task_state"] is not None:
                    return None
                out[u] = r
            return out
        return vntest.wait_for(settled, 180, interval=0.5, what="instances settled")

    def check(self, a, states):
        orphans = []
        doms = vntest.domain_uuids("a")
        for u, r in states.items():
            there = u in doms
            folder = os.path.exists(a.instance_dir(u))
            if r is None or r["vm_state"] == "deleted":
                if there or folder:
                    orphans.append(u)
            elif r["vm_state"] == "active":
                self.assertTrue(there, "%s active without a domain" % u)
                self.assertEqual(r["power_state"], 1, r)
            elif r["vm_state"] == "stopped":
                self.assertTrue(there, "%s stopped without a domain" % u)
                self.assertNotEqual(r["power_state"], 1, r)
            elif r["vm_state"] == "error":
                pass  # a failed build or delete: its leftovers are checked below
            else:
                self.fail("%s settled in %s" % (u, r["vm_state"]))
        # no domain of ours that no instance owns
        ours = set(states)
        for d in doms:
            self.assertIn(d, ours, "orphan domain %s" % d)
        return orphans

    def test_kill9_at_random_moments(self):
        seed = int(os.environ.get("VN_FAULT_SEED", time.time()))
        rng = random.Random(seed)
        print("kill -9 rounds: seed %d (VN_FAULT_SEED reproduces them)" % seed)
        a = self.agent("a").start()
        url, sha, size = vntest.publish_image()
        slow = (vntest.ENV["IMAGE_URL"] + "/slow/2048/guest.qcow2", sha, size)
        uuids, rids = [], []
        sent = 0
        t_recover = []
        for rnd in range(ROUNDS):
            live = [u for u in uuids]
            action = rng.choice(["build", "build", "delete", "stop", "start", "reboot"]
                                if live else ["build"])
            rid = "req-k9-%02d-%s" % (rnd, uuidlib.uuid4().hex[:6])
            ctx = {"request_id": rid}
            if action == "build":
                args = vntest.build_args("k9-%d" % rnd, image=slow if rng.random() < 0.5 else
                                         None, image_id="k9-slow" if rng.random() < 0.5 else
                                         "guest-1")
                uuids.append(args["instance"]["uuid"])
                self.rpc.cast("host-a", "build_and_run_instance", ctx=ctx, **args)
            else:
                method = {"delete": "terminate_instance", "stop": "stop_instance",
                          "start": "start_instance", "reboot": "reboot_instance"}[action]
                kw = {"reboot_type": "HARD"} if action == "reboot" else {}
                self.rpc.cast("host-a", method, ctx=ctx, instance_uuid=rng.choice(live), **kw)
            rids.append(rid)
            sent += 1
            time.sleep(rng.uniform(0.05, 1.5))
            a.kill9()
            t0 = time.monotonic()
            a.start()
            t_recover.append(time.monotonic() - t0)
            states = self.settle(a, uuids)
            orphans = self.check(a, states)
            self.assertEqual(orphans, [], "round %d (%s): orphans %s" % (rnd, action, orphans))
            uuids = [u for u, r in states.items() if r and r["vm_state"] != "deleted"]
        # every request was applied at most once (one action row per request id)
        time.sleep(3)
        rows = vntest.db_query("SELECT request_id, count(*) FROM instance_actions WHERE "
                               "request_id = ANY(%s) GROUP BY request_id", rids)
        twice = [r for r in rows if r[1] > 1]
        print("kill -9: rounds %d, requests %d, applied once %d, applied twice %d, lost %d, "
              "orphans 0, restart to ready %.1f s (max)" %
              (ROUNDS, sent, len(rows) - len(twice), len(twice), sent - len(rows),
               max(t_recover)))
        self.assertEqual(twice, [])
        self.assertEqual(len(rows), sent, "requests lost")
        for u in uuids:
            self.rpc.call("host-a", "terminate_instance", timeout=300, instance_uuid=u)


if __name__ == "__main__":
    unittest.main()
