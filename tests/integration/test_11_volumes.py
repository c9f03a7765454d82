"""Volumes on real servers: nfs-ganesha and tgtd (one target, CHAP, two portals) started by
the harness inside the network namespace of libvirt host "na", read and written by real
guests through QEMU's own NFS and iSCSI clients (this machine's kernel has neither client;
the kernel connectors run in tests/vm).  Only the namespace's loopback carries traffic."""

import json
import os
import subprocess
import time
import unittest
import uuid as uuidlib

import vntest

VOLUME_DRIVERS = {"storage.nfs_driver": "qemu", "storage.iscsi_driver": "qemu"}


def nfs_volume(name, fmt="raw", boot=False, delete=False):
    vid = str(uuidlib.uuid4())
    bd = {"volume_id": vid, "delete_on_termination": delete,
          "connection_info": {"driver_volume_type": "nfs",
                              "data": {"export": "127.0.0.1:" + vntest.ENV["STORAGE_EXPORT_DIR"],
                                       "name": name, "format": fmt, "options": None,
                                       "access_mode": "rw", "volume_id": vid},
                              "serial": vid}}
    if boot:
        bd["boot_index"] = 0
    return bd


def iscsi_volume(lun, boot=False, delete=False, chap=True, portals=True):
    vid = str(uuidlib.uuid4())
    iqn = vntest.ENV["STORAGE_IQN"]
    data = {"target_portal": "127.0.0.1:3260", "target_iqn": iqn, "target_lun": lun,
            "discard": True, "target_discovered": False, "access_mode": "rw",
            "volume_id": vid}
    if portals:
        data.update({"target_portals": ["127.0.0.1:3260", "127.0.0.2:3260"],
                     "target_iqns": [iqn, iqn], "target_luns": [lun, lun]})
    if chap:
        data.update({"auth_method": "CHAP", "auth_username": vntest.ENV["STORAGE_CHAP_USER"],
                     "auth_password": vntest.ENV["STORAGE_CHAP_PASSWORD"]})
    bd = {"volume_id": vid, "delete_on_termination": delete,
          "connection_info": {"driver_volume_type": "iscsi", "data": data}}
    if boot:
        bd["boot_index"] = 0
    return bd


def first_sector(path):
    with open(path, "rb") as f:
        return f.read(512).rstrip(b"\0").decode(errors="replace")


class Volumes(vntest.AgentTestCase):
    @classmethod
    def setUpClass(cls):
        vntest.start_nethost("na")
        vntest.harness("storage-start", "na")
        vntest.ENV.update(vntest._load_env())

    @classmethod
    def tearDownClass(cls):
        vntest.harness("storage-stop", "na")
        vntest.stop_nethost("na")

    def lun_path(self, lun):
        return os.path.join(vntest.ENV["STORAGE_LUN_DIR"], "lun%d.img" % lun)

    def blank_nfs(self, name, size="64M"):
        path = os.path.join(vntest.ENV["STORAGE_EXPORT_DIR"], name)
        subprocess.run(["truncate", "-s", "0", path], check=True)
        subprocess.run(["truncate", "-s", size, path], check=True)
        return path

    def blank_lun(self, lun):
        with open(self.lun_path(lun), "r+b") as f:
            f.write(b"\0" * 4096)

    def secrets(self):
        rc, out = vntest.in_host("na", "virsh", "-q", "secret-list", check=True)
        return out

    def boot(self, a, name, **kw):
        args = vntest.build_args(name)
        args.update(kw)
        r = self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        self.assertEqual(r["vm_state"], "active", r)
        u = args["instance"]["uuid"]
        vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in a.console(u), 120,
                        what="guest %s booted" % name)
        return u, r

    def marker(self, a, u, vid, word):
        found = []

        def seen():
            for line in a.console(u).splitlines():
                # virtio-blk serials hold 20 characters
                if line.startswith("VIRTNODE-VOL-%s %s " % (word, vid[:20])):
                    found.append(line.split()[-1])
                    return True
            return False
        try:
            vntest.wait_for(seen, 90, what="the guest's %s line for volume %s" % (word, vid))
        except AssertionError:
            vol = [l for l in a.console(u).splitlines() if "VOL" in l]
            raise AssertionError("no %s line for volume %s; the guest said: %s"
                                 % (word, vid, vol or a.console(u)[-600:]))
        return found[-1]

    def test_attach_detach_reattach(self):
        """A guest writes a marker to an NFS volume and to an iSCSI volume (CHAP, two
        portals listed); the servers' files hold it; after detach and re-attach the guest
        reads it back.  The CHAP password reaches libvirt's secret store only: never a
        reply, the journal or the log."""
        a = self.agent("na", extra=VOLUME_DRIVERS).start()
        u, _ = self.boot(a, "vol-guest")
        nfs_file = self.blank_nfs("volume-attach.raw")
        self.blank_lun(1)
        nv, iv = nfs_volume("volume-attach.raw"), iscsi_volume(1)
        r = self.rpc.call(a.host, "attach_volume", version="1.3", timeout=120, instance_uuid=u,
                          block_device=nv)
        self.assertEqual([b["volume_id"] for b in r["block_device_mapping"]], [nv["volume_id"]])
        self.assertEqual(r["block_device_mapping"][0]["device_name"], "vde")
        r = self.rpc.call(a.host, "attach_volume", version="1.3", timeout=120, instance_uuid=u,
                          block_device=iv)
        self.assertEqual(r["block_device_mapping"][1]["device_name"], "vdf")
        self.assertNotIn("auth_password", json.dumps(r))
        self.assertIn(iv["volume_id"], self.secrets())
        m_nfs = self.marker(a, u, nv["volume_id"], "WROTE")
        m_iscsi = self.marker(a, u, iv["volume_id"], "WROTE")
        self.assertEqual(first_sector(nfs_file), m_nfs, "the NFS server's file has the marker")
        self.assertEqual(first_sector(self.lun_path(1)), m_iscsi, "the LUN has the marker")
        for v in (nv, iv):
            r = self.rpc.call(a.host, "detach_volume", version="1.3", timeout=120,
                              instance_uuid=u, volume_id=v["volume_id"])
            vntest.wait_for(lambda: "VIRTNODE-VOL-REMOVED %s" % v["volume_id"][:20] in a.console(u),
                            60, what="the guest saw volume %s go" % v["volume_id"])
        self.assertEqual(r["block_device_mapping"], [])
        self.assertNotIn(iv["volume_id"], self.secrets(), "the secret left with the volume")
        xml = vntest.virt("na").lookupByUUIDString(u).XMLDesc(0)
        self.assertNotIn("vde", xml)
        # the same volumes again: the guest finds what it wrote
        for v in (nv, iv):
            self.rpc.call(a.host, "attach_volume", version="1.3", timeout=120, instance_uuid=u,
                          block_device=v)
        self.assertEqual(self.marker(a, u, nv["volume_id"], "READ"), m_nfs)
        self.assertEqual(self.marker(a, u, iv["volume_id"], "READ"), m_iscsi)
        # a detach of what is not attached is InvalidInput and changes nothing
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "detach_volume", version="1.3", timeout=60, instance_uuid=u,
                          volume_id="no-such-volume")
        self.assertEqual(e.exception.exc_type, "InvalidInput")
        # delete: the volumes leave the host with the guest, their data stays on the servers
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)
        self.assertNotIn(iv["volume_id"], self.secrets())
        self.assertEqual(first_sector(nfs_file), m_nfs)
        a.stop()
        password = vntest.ENV["STORAGE_CHAP_PASSWORD"]
        self.assertNotIn(password, a.log_text(), "the CHAP password is in the agent's log")
        for root, _, files in os.walk(a.state):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    self.assertNotIn(password.encode(), fh.read(),
                                     "the CHAP password is in %s" % f)
        print("volumes: NFS marker %s and iSCSI marker %s read back after re-attach"
              % (m_nfs, m_iscsi))

    def test_boot_from_volume(self):
        """Guests without an image boot from an NFS volume and from an iSCSI volume; their
        delete disconnects the volumes and reports delete_on_termination to the controller
        (the volume service deletes them); a build whose volume cannot be connected is
        rolled back with nothing left."""
        a = self.agent("na", extra=VOLUME_DRIVERS).start()
        image = vntest.ENV["GUEST_IMAGE"]
        boot_file = self.blank_nfs("volume-boot.raw")
        subprocess.run(["qemu-img", "convert", "-O", "raw", image, boot_file], check=True)
        subprocess.run(["qemu-img", "convert", "-n", "-O", "raw", image, self.lun_path(2)],
                       check=True)
        guests = []
        for name, bd in (("bfv-nfs", nfs_volume("volume-boot.raw", boot=True, delete=True)),
                         ("bfv-iscsi", iscsi_volume(2, boot=True, delete=True))):
            args = vntest.build_args(name)
            del args["instance"]["image"]
            args["block_device_mapping"] = [bd]
            r = self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
            self.assertEqual(r["vm_state"], "active", r)
            self.assertIsNone(r["image"])
            self.assertEqual(r["block_device_mapping"][0]["device_name"], "vda")
            u = args["instance"]["uuid"]
            vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in a.console(u), 180,
                            what="%s booted from its volume" % name)
            self.assertFalse(os.path.exists(os.path.join(a.instance_dir(u), "disk")),
                             "a guest booted from a volume has no local root disk")
            guests.append((u, bd))
        for u, bd in guests:
            r = self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)
            self.assertEqual(r["vm_state"], "deleted")
            self.assertTrue(r["block_device_mapping"][0]["delete_on_termination"])
            self.assertNotIn(u, vntest.domain_uuids("na"))
        self.assertNotIn(guests[1][1]["volume_id"], self.secrets())
        # no image and no boot volume: refused before anything
        args = vntest.build_args("no-root")
        del args["instance"]["image"]
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "build_and_run_instance", timeout=60, **args)
        self.assertEqual(e.exception.exc_type, "InvalidInput")
        # a volume whose CHAP password is wrong: QEMU cannot open it, the build rolls back
        bad = iscsi_volume(3)
        bad["connection_info"]["data"]["auth_password"] = "wrong-password-1"
        args = vntest.build_args("bad-chap")
        args["block_device_mapping"] = [bad]
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        self.assertNotIn(args["instance"]["uuid"], vntest.domain_uuids("na"))
        self.assertNotIn(bad["volume_id"], self.secrets())
        self.assertNotIn("wrong-password-1", str(e.exception))
        print("boot from volume: NFS and iSCSI guests booted and deleted; a bad CHAP "
              "password rolled back: %s" % e.exception.exc_type)

    def test_bad_volumes_touch_nothing(self):
        """Every entry of the bad-input corpus is InvalidInput over RPC, names its field and
        never quotes the password; nothing is connected, no secret is made."""
        a = self.agent("na", extra=VOLUME_DRIVERS).start()
        u, _ = self.boot(a, "vol-bad")
        corpus = json.load(open(os.path.join(vntest.SRC, "tests", "corpus", "bad_volumes.json")))
        before = self.secrets()
        for c in corpus:
            bd = c["block_device"]
            for method, kw, prefix in (
                    ("attach_volume", {"instance_uuid": u, "block_device": bd}, "block_device"),
                    ("build_and_run_instance", None, "block_device_mapping[0]")):
                expect = prefix + c["expect"] if c["expect"].startswith(".") else c["expect"]
                if kw is None:
                    kw = vntest.build_args("bad-vol")
                    kw["block_device_mapping"] = [bd]
                with self.assertRaises(self.rpc.om.RemoteError, msg=c["why"]) as e:
                    self.rpc.call(a.host, method, version="1.3", timeout=60, **kw)
                self.assertEqual(e.exception.exc_type, "InvalidInput", c["why"])
                self.assertIn(expect, str(e.exception), c["why"])
                self.assertNotIn("s3cr3t-chap", str(e.exception), c["why"])
        self.assertEqual(self.secrets(), before)
        r = self.rpc.call(a.host, "get_instance", instance_uuid=u)
        self.assertEqual(r["block_device_mapping"], [])
        a.stop()
        self.assertNotIn("s3cr3t-chap", a.log_text())
        print("bad volumes: %d refused with InvalidInput twice each, nothing connected"
              % len(corpus))

    def storage_state(self, host):
        rows = vntest.db_query("SELECT stats FROM compute_nodes WHERE host = %s", host)
        stats = rows[0][0] if rows else {}
        stats = json.loads(stats) if isinstance(stats, str) else stats
        return stats.get("storage_state"), stats.get("storage_degraded")

    def state(self, u):
        return vntest.virt("na").lookupByUUIDString(u).state()[0]

    def test_storage_failure_pauses_only_its_guests(self):
        """The NFS server stops answering (SIGSTOP): the guest with a volume on it pauses,
        the guest on the iSCSI target keeps running, the host's row says degraded; the
        server comes back: the guest resumes by itself and the row says healthy."""
        import libvirt
        a = self.agent("na", extra=dict(VOLUME_DRIVERS, **{"storage.volume_probe_interval": 2}))
        a.start()
        self.blank_nfs("volume-fail.raw")
        self.blank_lun(4)
        g_nfs, _ = self.boot(a, "on-nfs", block_device_mapping=[nfs_volume("volume-fail.raw")])
        g_iscsi, _ = self.boot(a, "on-iscsi", block_device_mapping=[iscsi_volume(4)])
        vntest.wait_for(lambda: self.storage_state(a.host)[0] == "healthy", 30,
                        what="the host row to report healthy storage")
        t0 = time.monotonic()
        vntest.harness("storage-nfs-stop", "na")
        try:
            vntest.wait_for(lambda: self.state(g_nfs) == libvirt.VIR_DOMAIN_PAUSED, 60,
                            what="the guest on the stopped NFS server to pause")
            paused_after = time.monotonic() - t0
            state, degraded = vntest.wait_for(
                lambda: (lambda s: s if s[0] == "degraded" else None)(self.storage_state(a.host)),
                30, what="the host row to report degraded storage")
            self.assertEqual(degraded, ["nfs:127.0.0.1:" + vntest.ENV["STORAGE_EXPORT_DIR"]])
            self.assertEqual(self.state(g_iscsi), libvirt.VIR_DOMAIN_RUNNING)
            beats = a.console(g_iscsi).count("VIRTNODE-HEARTBEAT")
            vntest.wait_for(lambda: a.console(g_iscsi).count("VIRTNODE-HEARTBEAT") > beats + 2,
                            30, what="the other guest to keep running")
            self.assertEqual(self.state(g_nfs), libvirt.VIR_DOMAIN_PAUSED,
                             "the guest stays paused while its storage is away")
        finally:
            vntest.harness("storage-nfs-cont", "na")
        t1 = time.monotonic()
        vntest.wait_for(lambda: self.state(g_nfs) == libvirt.VIR_DOMAIN_RUNNING, 60,
                        what="the guest to resume once its storage answers")
        resumed_after = time.monotonic() - t1
        vntest.wait_for(lambda: self.storage_state(a.host)[0] == "healthy", 30,
                        what="the host row to report healthy again")
        beats = a.console(g_nfs).count("VIRTNODE-HEARTBEAT")
        vntest.wait_for(lambda: a.console(g_nfs).count("VIRTNODE-HEARTBEAT") > beats + 2, 30,
                        what="the resumed guest to run")
        print("storage failure: paused %.1f s after the NFS server stopped, resumed %.1f s "
              "after it came back; the iSCSI guest ran throughout" % (paused_after, resumed_after))
        for g in (g_nfs, g_iscsi):
            self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=g)

    def test_attach_to_a_stopped_guest(self):
        """A volume attached while the guest is stopped is in its definition: the guest finds
        it when started; detached while stopped, it is gone at the next start."""
        a = self.agent("na", extra=VOLUME_DRIVERS).start()
        u, _ = self.boot(a, "vol-stopped")
        self.rpc.call(a.host, "stop_instance", timeout=300, instance_uuid=u)
        self.blank_nfs("volume-stopped.raw")
        v = nfs_volume("volume-stopped.raw")
        r = self.rpc.call(a.host, "attach_volume", version="1.3", timeout=120, instance_uuid=u,
                          block_device=v)
        self.assertEqual(r["vm_state"], "stopped")
        self.assertEqual(r["block_device_mapping"][0]["device_name"], "vde")
        self.rpc.call(a.host, "start_instance", timeout=300, instance_uuid=u)
        self.marker(a, u, v["volume_id"], "WROTE")
        self.rpc.call(a.host, "stop_instance", timeout=300, instance_uuid=u)
        self.rpc.call(a.host, "detach_volume", version="1.3", timeout=120, instance_uuid=u,
                      volume_id=v["volume_id"])
        self.rpc.call(a.host, "start_instance", timeout=300, instance_uuid=u)
        xml = vntest.virt("na").lookupByUUIDString(u).XMLDesc(0)
        self.assertNotIn("volume-stopped.raw", xml)
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)

    def test_kill9_mid_attach_leaves_nothing(self):
        """kill -9 of the agent while an attach is under way (the NFS server frozen, so the
        hot-plug hangs in QEMU): after the restart the replayed attach removes the disk the
        hot-plug left in the domain, the volume is in no record, and the caller is told to
        send it again; the same attach then works."""
        a = self.agent("na", extra=VOLUME_DRIVERS).start()
        u, _ = self.boot(a, "vol-kill9")
        self.blank_nfs("volume-kill9.raw")
        v = nfs_volume("volume-kill9.raw")
        dom = vntest.virt("na").lookupByUUIDString(u)
        vntest.harness("storage-nfs-stop", "na")
        try:
            self.rpc.cast(a.host, "attach_volume", version="1.3", instance_uuid=u, block_device=v)
            vntest.wait_for(lambda: "attach_volume started" in a.log_text(), 30,
                            what="the attach to start")
            time.sleep(2)
            a.kill9()
        finally:
            vntest.harness("storage-nfs-cont", "na")
        # libvirt finishes the hot-plug on its own once the server answers
        vntest.wait_for(lambda: v["volume_id"] in dom.XMLDesc(0) and
                        v["volume_id"] in dom.XMLDesc(2), 60,
                        what="the orphaned hot-plug to land in the domain")
        a.start()
        vntest.wait_for(lambda: v["volume_id"] not in dom.XMLDesc(0), 60,
                        what="the replayed attach to remove the half-attached disk")
        vntest.wait_for(lambda: v["volume_id"] not in dom.XMLDesc(2), 30,
                        what="the half-attached disk gone from the persistent definition")
        r = self.rpc.call(a.host, "get_instance", instance_uuid=u)
        self.assertEqual(r["block_device_mapping"], [])
        self.assertIsNone(r["task_state"])
        self.assertIn("the half-attached volume %s removed" % v["volume_id"], a.log_text())
        r = self.rpc.call(a.host, "attach_volume", version="1.3", timeout=120, instance_uuid=u,
                          block_device=v)
        self.assertEqual([b["volume_id"] for b in r["block_device_mapping"]], [v["volume_id"]])
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)

    def test_stale_secret_swept_at_start(self):
        """A secret a crash left behind (defined, its volume never recorded) is removed when
        the agent starts; the secret of an attached volume stays."""
        a = self.agent("na", extra=VOLUME_DRIVERS).start()
        u, _ = self.boot(a, "vol-sweep")
        iv = iscsi_volume(4)
        self.blank_lun(4)
        self.rpc.call(a.host, "attach_volume", version="1.3", timeout=120, instance_uuid=u,
                      block_device=iv)
        a.kill9()
        stale = str(uuidlib.uuid4())
        xml = ("<secret ephemeral='no' private='yes'><usage type='iscsi'>"
               "<target>virtnode-volume-%s</target></usage></secret>" % stale)
        vntest.virt("na").secretDefineXML(xml)
        self.assertIn(stale, self.secrets())
        a.start()
        self.assertNotIn(stale, self.secrets(), "the stale secret was swept")
        self.assertIn(iv["volume_id"], self.secrets(), "the live volume's secret stays")
        self.marker(a, u, iv["volume_id"], "WROTE")
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)


if __name__ == "__main__":
    unittest.main()
