"""What a compromised guest's QEMU can write is never trusted: a qcow2 header rewritten to
name another file as its backing is ignored at the next hard reboot (the guest gets the
base its record names, and the tampering is logged).  Secrets in an image URL reach the
download and nothing else: no log, record, journal row, database row, reply or
notification holds them."""

import glob
import os
import shutil
import sqlite3
import json
import struct
import time
import unittest
import xml.etree.ElementTree as ET

import libvirt

import pika

import vntest
from vntest import ENV


def qcow2_backing(path):
    with open(path, "rb") as f:
        h = f.read(20)
        off, size = struct.unpack(">QI", h[8:20])
        f.seek(off)
        return f.read(size).decode()


def holders(path):
    """pids with @path open."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % d)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%s/fd/%s" % (d, fd)) == path:
                    pids.append(int(d))
                    break
            except OSError:
                pass
    return pids


def qcow2_set_backing(path, name):
    """Rewrites the backing name in place, as a compromised QEMU could (same length)."""
    with open(path, "r+b") as f:
        h = f.read(20)
        off, size = struct.unpack(">QI", h[8:20])
        assert len(name) == size
        f.seek(off)
        f.write(name.encode())


class Security(vntest.AgentTestCase):
    def call(self, method, **kw):
        return self.rpc.call("host-a", method, timeout=300, **kw)

    def test_rewritten_backing_name_is_ignored_at_hard_reboot(self):
        a = self.agent("a").start()
        args = vntest.build_args("tamper-1")
        u = args["instance"]["uuid"]
        self.assertEqual(self.call("build_and_run_instance", **args)["vm_state"], "active")
        vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in a.console(u), 60, what="boot")
        disk = os.path.join(a.instance_dir(u), "disk")
        base = qcow2_backing(disk)
        # the "victim": another file of the same name length, in the cache folder
        victim = os.path.join(os.path.dirname(base), "f" * len(os.path.basename(base)))
        shutil.copyfile(base, victim)
        try:
            self.call("stop_instance", instance_uuid=u)
            qcow2_set_backing(disk, victim)
            self.assertEqual(qcow2_backing(disk), victim)
            boots = a.console(u).count("VIRTNODE-GUEST-BOOTED")
            r = self.call("reboot_instance", instance_uuid=u, reboot_type="HARD")
            self.assertEqual(r["power_state"], 1, r)
            vntest.wait_for(lambda: a.console(u).count("VIRTNODE-GUEST-BOOTED") > boots, 60,
                            what="boot after the hard reboot")
            c = vntest.virt("a")
            try:
                x = ET.fromstring(c.lookupByUUIDString(u).XMLDesc(0))
            finally:
                c.close()
            src = x.find("./devices/disk/backingStore/source")
            self.assertEqual(src.get("file"), base, "the domain uses the header's backing")
            self.assertIn("the header is ignored", a.log_text())
            self.assertIn(victim, a.log_text())
            # no process holds the victim open; the guest's QEMU holds its real base
            self.assertEqual(holders(victim), [])
            self.assertIn(vntest.qemu_pid(u), holders(base))
        finally:
            self.call("terminate_instance", instance_uuid=u)
            os.unlink(victim)


    def test_url_secrets_reach_the_download_only(self):
        ch_conn = pika.BlockingConnection(pika.URLParameters(ENV["AMQP_URL"]))
        ch = ch_conn.channel()
        ch.queue_declare("notifications.info", durable=True)
        ch.queue_purge("notifications.info")
        # a database password too (the test database trusts every client: it is sent,
        # and must appear nowhere)
        pwfile = os.path.join(vntest.RUN, "db-password")
        with open(pwfile, "w") as f:
            f.write("DbS3cretPw\n")
        a = self.agent("a", extra={"database.password_file": pwfile}).start()
        url, sha, size = vntest.publish_image()
        secret_url = url.replace("http://", "http://imguser:S3CRETpw@") + "?token=T0KENvalue"
        args = vntest.build_args("secret-url", image=(secret_url, sha, size),
                                 image_id="secret-image")
        u = args["instance"]["uuid"]
        reply = self.rpc.call("host-a", "build_and_run_instance", timeout=300, **args)
        self.assertEqual(reply["vm_state"], "active")
        vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in a.console(u), 60, what="boot")
        got = self.rpc.call("host-a", "get_instance", instance_uuid=u)
        listed = self.rpc.call("host-a", "list_instances")
        self.rpc.call("host-a", "stop_instance", timeout=300, instance_uuid=u)
        time.sleep(3)  # the reporter's interval: rows and actions written
        places = {"build reply": json.dumps(reply), "get_instance": json.dumps(got),
                  "list_instances": json.dumps(listed), "agent log": a.log_text()}
        # the journal, every table and every WAL page
        jdb = os.path.join(a.state, "journal.db")
        c = sqlite3.connect(jdb)
        places["journal"] = "\n".join(c.iterdump())
        c.close()
        for f in glob.glob(jdb + "*"):
            with open(f, "rb") as fh:
                places["journal file " + os.path.basename(f)] = fh.read().decode("latin-1")
        # every table of the central database
        tables = [r[0] for r in vntest.db_query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for t in tables:
            rows = vntest.db_query("SELECT t::text FROM %s t" % t)
            places["table " + t] = "\n".join(r[0] for r in rows or [])
        # the notifications published
        notes = []
        while True:
            m, _, body = ch.basic_get("notifications.info", auto_ack=True)
            if not m:
                break
            notes.append(body.decode())
        ch_conn.close()
        self.assertTrue(notes, "no notification was published")
        places["notifications"] = "\n".join(notes)
        for where, text in places.items():
            for secret in ("S3CRETpw", "T0KENvalue", "imguser:", "DbS3cretPw"):
                self.assertNotIn(secret, text, "%s holds '%s'" % (where, secret))
        # yet the download used the URL as given (the image server saw the token)
        self.assertTrue(any("token=T0KENvalue" in p for p in vntest.image_requests()),
                        vntest.image_requests())
        self.rpc.call("host-a", "terminate_instance", timeout=300, instance_uuid=u)


if __name__ == "__main__":
    unittest.main()
