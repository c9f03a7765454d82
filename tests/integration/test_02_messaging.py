"""The AMQP RPC server, driven by a real oslo.messaging client: calls, casts, remote
errors, call-monitor keep-alives, notifications, malformed messages and dead-lettering,
and transient queues when configured (a broker restart is in tests/faults)."""

import glob
import json
import os
import sqlite3
import time
import unittest
import uuid as uuidlib

import pika

import vntest
from vntest import ENV, Rpc


def pika_channel():
    params = pika.URLParameters(ENV["AMQP_URL"])
    conn = pika.BlockingConnection(params)
    return conn, conn.channel()


class Messaging(vntest.AgentTestCase):
    def test_ping_and_remote_errors(self):
        self.agent("a").start()
        rpc = Rpc()
        try:
            r = rpc.call("host-a", "ping", arg={"x": [1, "two"]})
            self.assertEqual(r, {"service": "virtnode", "host": "host-a", "arg": {"x": [1, "two"]}})
            # Nova's baseapi namespace works too
            c = rpc.client.prepare(server="host-a", namespace="baseapi", version="1.1")
            self.assertEqual(c.call({}, "ping", arg=5)["arg"], 5)
            with self.assertRaises(rpc.om.RemoteError) as e:
                rpc.call("host-a", "frobnicate")
            self.assertEqual(e.exception.exc_type, "NoSuchMethod")
            self.assertIn("frobnicate", str(e.exception))
            with self.assertRaises(rpc.om.RemoteError) as e:
                rpc.call("host-a", "ping", version="2.0", arg=1)
            self.assertEqual(e.exception.exc_type, "UnsupportedVersion")
            with self.assertRaises(rpc.om.RemoteError) as e:
                rpc.call("host-a", "get_instance", instance_uuid=str(uuidlib.uuid4()))
            self.assertEqual(e.exception.exc_type, "InstanceNotFound")
            with self.assertRaises(rpc.om.RemoteError) as e:
                rpc.call("host-a", "stop_instance", instance_uuid="not-a-uuid")
            self.assertEqual(e.exception.exc_type, "InvalidInput")
            self.assertIn("instance_uuid", str(e.exception))
        finally:
            rpc.close()

    def test_cast_executed_and_notified_and_long_call_kept_alive(self):
        a = self.agent("a").start()
        conn, ch = pika_channel()
        ch.queue_declare("notifications.info", durable=True)
        ch.queue_purge("notifications.info")
        rpc = Rpc()
        try:
            args = vntest.build_args("msg-1", metadata={"vn.acpi": "ignore"})
            u = args["instance"]["uuid"]
            rpc.cast("host-a", "build_and_run_instance", **args)
            vntest.wait_for(lambda: self.state(rpc, u) == "active", 120, what="build by cast")
            events = set()

            def notified():
                while True:
                    m, props, body = ch.basic_get("notifications.info", auto_ack=True)
                    if not m:
                        break
                    msg = json.loads(json.loads(body)["oslo.message"])
                    if msg["payload"]["virtnode_object.data"].get("uuid") == u:
                        events.add(msg["event_type"])
                return {"instance.create.start", "instance.create.end"} <= events
            vntest.wait_for(notified, 20, what="create notifications")

            # the broker confirmed them: their copies leave the journal's outbox
            def outbox_empty():
                c = sqlite3.connect("file:%s?mode=ro" % os.path.join(a.state, "journal.db"),
                                    uri=True)
                try:
                    return c.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
                finally:
                    c.close()
            vntest.wait_for(outbox_empty, 20, what="the confirmed notifications removed")

            # the guest ignores the power button: stop waits 12 s, longer than the
            # caller's call-monitor timeout of 4 s; keep-alives carry the call through
            t0 = time.monotonic()
            c = rpc.client.prepare(server="host-a", timeout=120, call_monitor_timeout=4)
            r = c.call({}, "stop_instance", instance_uuid=u, timeout=12)
            took = time.monotonic() - t0
            self.assertEqual(r["vm_state"], "stopped")
            self.assertGreater(took, 8, "the guest was expected to ignore the power button")
            m = a.metrics()
            self.assertIn("virtnode_amqp_keepalives_total", m)
            # the histogram has both builds' and the stop's durations; ready agrees with /readyz
            self.assertRegex(m, r'virtnode_operation_duration_seconds_count\{method='
                                r'"build_and_run_instance"\} [1-9]')
            self.assertRegex(m, r'virtnode_operation_duration_seconds_bucket\{method='
                                r'"stop_instance",le="\+Inf"\} 1')
            self.assertRegex(m, r'virtnode_build_info\{version="[0-9.]+"\} 1')
            self.assertIn("virtnode_ready 1\n", m)
            # where the memory goes: the heap (glibc's account: a sanitizer's allocator
            # replaces it, so only its presence is checked) and the journal's part
            self.assertRegex(m, r'(?m)^virtnode_heap_bytes\{state="in_use"\} [0-9]')
            self.assertRegex(m, r'(?m)^virtnode_heap_bytes\{state="free"\} [0-9]')
            journal = a.metric("virtnode_journal_memory_bytes", m)
            self.assertGreater(journal, 0)
            self.assertTrue(a.ready())
            rpc.call("host-a", "terminate_instance", instance_uuid=u)
        finally:
            rpc.close()
            conn.close()

    @staticmethod
    def state(rpc, u):
        try:
            return rpc.call("host-a", "get_instance", instance_uuid=u)["vm_state"]
        except rpc.om.RemoteError:
            return None

    def test_bad_messages_answered_or_dead_lettered(self):
        topic = "compute-badmsg"
        a = self.agent("a", extra={"amqp.topic": topic, "amqp.dead_letter_exchange": "vn-dlx",
                                   "amqp.max_message_bytes": "4096"}).start()
        conn, ch = pika_channel()
        reply_q = "reply_badmsg_%s" % uuidlib.uuid4().hex
        ch.queue_declare(reply_q, auto_delete=True)
        ch.queue_declare("vn-dlx", durable=True)
        ch.queue_purge("vn-dlx")
        corpus = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "bad_messages", "*")))
        self.assertGreater(len(corpus), 8)
        expect_replies = 0
        for path in corpus:
            with open(path, "rb") as f:
                body = f.read().replace(b"@REPLY_Q@", reply_q.encode())
            if b"@BIG@" in body:
                body = body.replace(b"@BIG@", b"x" * 8192)
            if reply_q.encode() in body and not path.endswith("-noreply"):
                expect_replies += 1
            ch.basic_publish("virtnode", "%s.host-a" % topic, body)
        replies = []
        end = time.monotonic() + 20
        while len(replies) < expect_replies and time.monotonic() < end:
            m, props, body = ch.basic_get(reply_q, auto_ack=True)
            if m:
                replies.append(json.loads(json.loads(body)["oslo.message"]))
            else:
                time.sleep(0.1)
        self.assertEqual(len(replies), expect_replies)
        for r in replies:
            self.assertTrue(r["ending"])
            failure = json.loads(r["failure"])
            self.assertIn(failure["class"], ("MalformedRequest", "UnsupportedVersion",
                                             "InvalidInput", "NoSuchMethod"))
            self.assertTrue(failure["message"])
        # every message was rejected to the dead-letter exchange
        vntest.wait_for(lambda: ch.queue_declare("vn-dlx", passive=True).method.message_count
                        >= len(corpus), 20, what="dead letters")
        # and the agent still serves
        rpc = Rpc(topic=topic)
        try:
            self.assertEqual(rpc.call("host-a", "ping", arg=1)["arg"], 1)
        finally:
            rpc.close()
        self.assertIn("rejecting message", a.log_text())
        conn.close()

    def test_transient_queues_when_configured(self):
        """durable_queues = false (a controller fleet that declares transient queues) still
        serves calls on an exchange declared alike."""
        topic, exchange = "compute-transient", "virtnode-transient"
        a = self.agent("a", extra={"amqp.topic": topic, "amqp.durable_queues": "false",
                                   "amqp.control_exchange": exchange,
                                   "amqp.notification_topic": "notifications-transient"}).start()
        rpc = Rpc(exchange=exchange, topic=topic, durable=False)
        try:
            self.assertEqual(rpc.call("host-a", "ping", arg=7)["arg"], 7)
        finally:
            rpc.close()
        self.assertEqual(a.proc.poll(), None, "the agent died")


if __name__ == "__main__":
    unittest.main()
