"""virtnodectl as an operator uses it: the common options anywhere on the line, --json on
every command (one JSON document on stdout), the documented exit codes (0 done, 1 failed,
2 bad usage), an unreachable broker reported in one line at once, migration-show after
the move answered from the central database, and the move-and-recover commands (resize,
cold migrate, confirm, revert, rebuild, snapshot, evacuate) with their progress."""

import json
import os
import subprocess
import time
import unittest

import vntest


class Ctl(vntest.AgentTestCase):
    def ctl(self, *args, expect=0, timeout=600):
        r = subprocess.run([os.path.join(vntest.BIN, "virtnodectl")] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        self.assertEqual(r.returncode, expect, "virtnodectl %s\n%s%s" %
                         (" ".join(args), r.stdout, r.stderr))
        return r

    def setUp(self):
        super().setUp()
        # an empty configuration: everything comes from the command line
        self.empty = os.path.join(vntest.RUN, "agents", "ctl-empty.conf")
        os.makedirs(os.path.dirname(self.empty), exist_ok=True)
        open(self.empty, "w").close()

    def common(self):
        # after the command, as operators type them
        return ["--url", vntest.ENV["AMQP_URL"], "--db", vntest.ENV["PG_DSN"], "-c", self.empty]

    def test_usage_and_unreachable_broker(self):
        # a broker that refuses: one line naming it and why, exit 1, at once
        t0 = time.monotonic()
        r = self.ctl("ping", "somehost", "--url", "amqp://guest:guest@127.0.0.1:1/", "-c",
                     self.empty, expect=1)
        took = time.monotonic() - t0
        self.assertEqual(r.stdout, "")
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn("cannot reach the message broker", lines[0])
        self.assertIn("127.0.0.1:1", lines[0])
        self.assertIn("refused", lines[0])
        self.assertNotIn("guest:guest", lines[0])
        self.assertLess(took, 3.0)
        # bad usage: exit 2
        self.ctl("list", "--bogus", *self.common(), expect=2)
        self.ctl("--bogus", "list", expect=2)
        self.ctl("show", "not-a-uuid", "-H", "x", *self.common(), expect=2)
        self.ctl("no-such-command", *self.common(), expect=2)

    def test_json_everywhere_and_migration_show_after_the_move(self):
        a = self.agent("a")
        b = self.agent("b")
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        c = self.common()
        j = lambda r: json.loads(r.stdout)  # noqa: E731 - exactly one JSON document

        self.assertEqual(j(self.ctl("ping", a.host, "--json", *c))["host"], a.host)
        url, sha, size = vntest.publish_image()
        r = self.ctl("boot", "--name", "ctl-1", "--image-url", url, "--image-sha256", sha,
                     "-H", a.host, "--json", *c)
        inst = j(r)
        u = inst["uuid"]
        self.assertEqual(inst["vm_state"], "active")
        # the host comes from the central database from here on
        self.assertEqual(j(self.ctl("show", u, "--json", *c))["host"], a.host)
        listed = j(self.ctl("list", "-H", a.host, "--json", *c))
        self.assertIn(u, [i["uuid"] for i in listed])
        vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in a.console(u), 120,
                        what="the guest to boot")
        self.assertIn("VIRTNODE-GUEST-BOOTED",
                      j(self.ctl("console", u, "--lines", "50", "--json", *c))["output"])
        host = j(self.ctl("host", a.host, "--json", *c))
        self.assertEqual(host["host"], a.host)
        sent = j(self.ctl("cast", "ping", '{"arg": 1}', "-H", a.host, "--json", *c))
        self.assertEqual(sent, {"sent": "ping", "host": a.host})

        # a live migration with progress, then its record from the database: the instance
        # now lives on b, whose agent never ran the migration
        m = j(self.ctl("migrate", u, "--to", b.host, "--json", *c))
        self.assertEqual(m["status"], "completed", m)
        shown = j(self.ctl("migration-show", u, "--json", *c))
        self.assertEqual((shown["status"], shown["source_host"], shown["dest_host"]),
                         ("completed", a.host, b.host))
        self.assertEqual(j(self.ctl("show", u, "--json", *c))["host"], b.host)

        # a remote failure: exit 1, the remote error in one line
        r = self.ctl("stop", "--json", "00000000-0000-4000-8000-000000000001", "-H", b.host, *c,
                     expect=1)
        self.assertIn("InstanceNotFound", r.stderr)
        done = j(self.ctl("delete", u, "--json", *c))
        self.assertEqual((done["uuid"], done["vm_state"]), (u, "deleted"), done)


    def test_move_and_recover_commands(self):
        a = self.agent("a").start()
        b = self.agent("b").start()
        c = self.common()
        j = lambda r: json.loads(r.stdout)  # noqa: E731 - exactly one JSON document
        url, sha, size = vntest.publish_image()
        u = j(self.ctl("boot", "--name", "ctl-move", "--image-url", url, "--image-sha256", sha,
                       "-H", a.host, "--json", *c))["uuid"]
        vntest.wait_for(lambda: vntest.db_query("SELECT host FROM instances WHERE uuid = %s "
                                                "AND task_state IS NULL", u) == [(a.host,)],
                        30, what="the database to place the guest on A")

        r = self.ctl("resize", u, "--vcpus", "2", "--memory-mb", "192", "--flavor", "m1.mid",
                     "--to", b.host, *c)
        self.assertIn("resized", r.stdout)
        self.assertIn("resize_migrating", r.stderr)  # the progress it showed
        r = j(self.ctl("resize-revert", u, "--json", *c))
        self.assertEqual((r["vm_state"], r["host"]), ("active", a.host))
        r = j(self.ctl("migrate", u, "--to", b.host, "--cold", "--json", *c))
        self.assertEqual((r["vm_state"], r["host"], r["flavor"]["memory_mb"]),
                         ("resized", b.host, 128))
        r = j(self.ctl("resize-confirm", u, "--json", *c))
        self.assertEqual((r["vm_state"], r["host"]), ("active", b.host))
        self.assertNotIn(u, vntest.domain_uuids("a"))

        r = j(self.ctl("rebuild", u, "--json", *c))
        self.assertEqual((r["vm_state"], r["host"]), ("active", b.host))
        up = vntest.ENV["IMAGE_URL"] + "/uploads/ctl-%s.qcow2" % u[:8]
        r = self.ctl("snapshot", u, "--image-id", "ctl-snap", "--upload-url", up, *c)
        self.assertRegex(r.stderr, r"image_(snapshot|uploading)")  # the progress it showed
        with open(os.path.join(vntest.RUN, "images", "uploads", "ctl-%s.qcow2" % u[:8]),
                  "rb") as f:
            self.assertIn("image ctl-snap: %d bytes" % len(f.read()), r.stdout)

        # B dies; its guest comes up on A from the central database's record of it
        vntest.wait_for(lambda: vntest.db_query("SELECT host, task_state FROM instances "
                                                "WHERE uuid = %s", u) == [(b.host, None)],
                        30, what="the database to place the guest on B")
        vntest.harness("host-crash", "b")
        try:
            r = j(self.ctl("evacuate", u, "--to", a.host, "--json", *c))
            self.assertEqual((r["vm_state"], r["host"]), ("active", a.host))
        finally:
            vntest.harness("host-start", "b")
        self.ctl("delete", u, *c)

if __name__ == "__main__":
    unittest.main()
