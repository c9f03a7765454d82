"""Fault: SIGTERM while work of every kind is in flight — builds downloading, a power
operation, queries, queued casts.  The agent (under ASan in the sanitized run) stops in
its one documented order within graceful_shutdown_timeout plus the cancel grace, exits 0
without a memory error, and after a restart every request is settled: each build is
running or failed with nothing left behind, and no domain or folder is orphaned."""

import os
import threading
import time
import unittest

import vntest
from vntest import ENV

GRACE = 3


class Sigterm(vntest.AgentTestCase):
    def test_sigterm_with_work_in_flight(self):
        a = self.agent("a", extra={"graceful_shutdown_timeout": str(GRACE)}).start()
        # a running guest for the power operation
        args = vntest.build_args("sigterm-running")
        g = args["instance"]["uuid"]
        self.assertEqual(self.rpc.call("host-a", "build_and_run_instance", timeout=300,
                                       **args)["vm_state"], "active")
        url, sha, size = vntest.publish_image("slow-sigterm.qcow2")
        slow = (ENV["IMAGE_URL"] + "/slow/512/slow-sigterm.qcow2", sha, size)
        outcomes = {}

        def build(i):
            b = vntest.build_args("sigterm-%d" % i, image=slow, image_id="slow-sigterm-%d" % i)
            u = b["instance"]["uuid"]
            outcomes[u] = None
            try:
                outcomes[u] = self.rpc.call("host-a", "build_and_run_instance", timeout=120, **b)
            except Exception as e:  # noqa: BLE001 - any answer counts; none is the failure
                outcomes[u] = e

        threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(2)
        self.rpc.cast("host-a", "stop_instance", instance_uuid=g)
        for _ in range(5):
            self.rpc.call("host-a", "get_instance", instance_uuid=g)
        for _ in range(5):  # queued behind the stop on the same instance
            self.rpc.cast("host-a", "get_console_output", instance_uuid=g)
        t0 = time.monotonic()
        code = a.stop(timeout=GRACE + 30)
        took = time.monotonic() - t0
        log = a.log_text()
        self.assertEqual(code, 0, a.tail(60))
        self.assertNotIn("AddressSanitizer", log)
        self.assertNotIn("runtime error", log)
        self.assertLess(took, GRACE + 20)

        a.start()
        for t in threads:
            t.join(180)
        answered = sum(1 for v in outcomes.values() if v is not None)
        left = []
        for u, out in outcomes.items():
            got = vntest.wait_for(
                lambda: (lambda r: r if r["task_state"] is None else None)(
                    self.rpc.call("host-a", "get_instance", instance_uuid=u)),
                120, what="build %s settled" % u)
            running = u in vntest.domain_uuids("a")
            if got["vm_state"] == "active":
                self.assertTrue(running, "active without a domain")
            else:
                self.assertEqual(got["vm_state"], "error", got)
                if running or os.path.exists(a.instance_dir(u)):
                    left.append(u)
            self.rpc.call("host-a", "terminate_instance", timeout=300, instance_uuid=u)
        got = self.rpc.call("host-a", "get_instance", instance_uuid=g)
        self.assertIsNone(got["task_state"])
        self.assertEqual(got["power_state"] == 1, g in vntest.domain_uuids("a"))
        print("sigterm: builds 3, answered %d, orphans %d, stopped in %.1f s, exit %d" %
              (answered, len(left), took, code))
        self.assertEqual(left, [])
        self.assertEqual(answered, 3, "a build caller never heard back")


if __name__ == "__main__":
    unittest.main()
