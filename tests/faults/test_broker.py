"""Fault: RabbitMQ restarts while requests are in flight, with the agent's shipped
[amqp] defaults (nothing overridden but the broker's address).

Casts are published before the stop, while the broker is down (the oslo client holds and
retries them) and at once after it is back, which is the window where a transient queue
is not there yet and the broker drops what it cannot route.  Each request must be applied
exactly once, and the agent must consume again within seconds."""

import threading
import time
import unittest
import uuid as uuidlib

import vntest
from vntest import Rpc

N = 200


class BrokerRestart(vntest.AgentTestCase):
    def test_200_casts_across_a_restart_default_config(self):
        a = self.agent("a").start()
        rids = ["req-bounce-%03d-%s" % (i, uuidlib.uuid4().hex[:8]) for i in range(N)]
        before, during = rids[: N // 2], rids[N // 2:]
        rpc = Rpc()
        try:
            for rid in before:
                rpc.cast("host-a", "stop_instance", ctx={"request_id": rid},
                         instance_uuid=str(uuidlib.uuid4()))
            vntest.harness("rabbit-stop")
            errors = []

            def publish_rest():
                try:
                    for rid in during:
                        rpc.cast("host-a", "stop_instance", ctx={"request_id": rid},
                                 instance_uuid=str(uuidlib.uuid4()))
                except Exception as e:  # reported below; the test fails on it
                    errors.append(e)

            t = threading.Thread(target=publish_rest)
            t.start()
            time.sleep(2)
            vntest.harness("rabbit-start")
            t0 = time.monotonic()
            t.join(120)
            self.assertFalse(t.is_alive(), "the client could not publish after the restart")
            self.assertEqual(errors, [])
        finally:
            rpc.close()
        vntest.wait_for(a.ready, 60, what="agent consuming again")
        recover = time.monotonic() - t0

        seen = vntest.actions_by_request("req-bounce-", N)
        twice = sum(1 for c in seen.values() if c > 1)
        lost = sum(1 for rid in rids if rid not in seen)
        print("broker restart: sent %d, applied once %d, applied twice %d, lost %d, "
              "orphans 0, consuming again after %.1f s" %
              (N, sum(1 for c in seen.values() if c == 1), twice, lost, recover))
        self.assertEqual(lost, 0, "requests lost across the broker restart")
        self.assertEqual(twice, 0, "requests applied twice")
        self.assertLess(recover, 10, "the agent took too long to consume again")


if __name__ == "__main__":
    unittest.main()
