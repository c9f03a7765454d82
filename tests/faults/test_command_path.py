"""A heartbeat that proves the command path: the agent's link to the broker goes dead
(every packet to RabbitMQ dropped inside the host's own network namespace, the TCP
connection left half-open) while its process, its libvirt and its database link live on.
The services row keeps its fresh last_seen_up (the classic heartbeat says "up"), but its
last_probe_at ages: the documented scheduler query (docs/database.md) drops the host
within service_down_time, and takes it back once the agent consumes again.

A consumer the broker cancels (its queue deleted, or a quorum queue's leader moved) is
taken up again on the same connection: the queue is declared again and consumed, no
reconnect, and the host never leaves the scheduler's list."""

import re
import time
import unittest

import vntest

SERVICE_DOWN_TIME = 6  # the scheduler's setting for this test, in seconds

# docs/database.md: the hosts a scheduler may place on
SCHEDULABLE = """
SELECT s.host FROM services s
 WHERE s."binary" = 'virtnode-compute' AND NOT s.disabled
   AND s.last_seen_up  > now() - make_interval(secs => %s)
   AND s.last_probe_at > now() - make_interval(secs => %s)
"""


class CommandPath(vntest.AgentTestCase):
    @classmethod
    def setUpClass(cls):
        vntest.start_nethost("na")

    @classmethod
    def tearDownClass(cls):
        vntest.stop_nethost("na")

    def schedulable(self, host):
        rows = vntest.db_query(SCHEDULABLE, SERVICE_DOWN_TIME, SERVICE_DOWN_TIME)
        return host in [r[0] for r in rows]

    def heartbeat_age(self, host):
        return vntest.db_query("SELECT extract(epoch FROM now() - last_seen_up) FROM services"
                               " WHERE host = %s", host)[0][0]

    def metric(self, agent, name):
        """A metric of the agent in host na (its API listens inside the namespace)."""
        _, m = vntest.in_host("na", "curl", "-s", "http://127.0.0.1:%d/metrics" % agent.api_port,
                              check=True)
        found = re.search(r"^virtnode_%s (\S+)$" % name, m, re.M)
        self.assertIsNotNone(found, m)
        return float(found.group(1))

    def block(self, on):
        rule = ["OUTPUT", "-p", "tcp", "--dport", vntest.ENV["AMQP_PORT"], "-j", "DROP"]
        vntest.in_host("na", "iptables", "-I" if on else "-D", *rule, check=True)

    def test_dead_consumer_leaves_the_scheduler_and_comes_back(self):
        a = self.agent("na", extra={"DEFAULT.heartbeat_interval": "1",
                                    "amqp.heartbeat_timeout_threshold": "10"}).start()
        binary = vntest.db_query("SELECT \"binary\" FROM services WHERE host = %s", a.host)
        self.assertEqual(binary[0][0], "virtnode-compute", "the query's binary name")
        # the probe's own metric first: the row may still be fresh from an earlier agent
        vntest.wait_for(lambda: self.metric(a, "command_path_probe_age_seconds") >= 0, 15,
                        what="the first probe")
        self.assertTrue(self.schedulable(a.host))

        self.block(True)
        try:
            t0 = time.monotonic()
            vntest.wait_for(lambda: not self.schedulable(a.host), SERVICE_DOWN_TIME + 5,
                            what="the host to leave the scheduler's list")
            left = time.monotonic() - t0
            # the process lives and its classic heartbeat stays fresh: only the probe told
            self.assertLess(self.heartbeat_age(a.host), 3)
            self.assertIsNotNone(a.daemon_pid(), "the agent lives")
            time.sleep(3)
            self.assertFalse(self.schedulable(a.host))
        finally:
            self.block(False)
        t1 = time.monotonic()
        vntest.wait_for(lambda: self.schedulable(a.host), 90,
                        what="the host to come back once it consumes again")
        back = time.monotonic() - t1
        print("command path: left the list %.1f s after the cut (service_down_time %d s), "
              "back %.1f s after the repair" % (left, SERVICE_DOWN_TIME, back))
        self.assertLessEqual(left, SERVICE_DOWN_TIME + 2)
        self.assertEqual(self.rpc.call(a.host, "ping", arg=5)["arg"], 5)


    def test_cancelled_consumer_consumes_again_without_reconnecting(self):
        a = self.agent("na", extra={"DEFAULT.heartbeat_interval": "1"}).start()
        vntest.wait_for(lambda: self.schedulable(a.host), 15, what="the first probe")

        before = self.metric(a, "amqp_reconnects_total")
        queue = "compute.%s" % a.host
        out = vntest.harness_out("rabbitmqctl", "delete_queue", queue)
        t0 = time.monotonic()
        vntest.wait_for(lambda: "consuming requests again from '%s'" % queue in a.log_text(), 10,
                        what="the agent to consume again")
        print("cancelled consumer: consuming again %.2f s after the queue was deleted (%s)"
              % (time.monotonic() - t0, out.strip()))
        self.assertIn("cancelled consumer", a.log_text())
        self.assertEqual(self.rpc.call(a.host, "ping", arg=7)["arg"], 7,
                         "a call through the declared-again queue")
        consumers = vntest.harness_out("rabbitmqctl", "list_queues", "name", "consumers")
        self.assertRegex(consumers, r"(?m)^%s\s+1$" % re.escape(queue))
        self.assertEqual(self.metric(a, "amqp_reconnects_total"), before, "the link was kept")
        self.assertNotIn("reconnecting", a.log_text())
        time.sleep(2)
        self.assertTrue(self.schedulable(a.host), "the host stayed schedulable")


if __name__ == "__main__":
    unittest.main()
