"""A guest with an NFS and an iSCSI (CHAP) volume live-migrates between the paired hosts
"na" and "nb"; the servers run in na's namespace and answer nb over the migration link
(203.0.113.1).  The destination connects the volumes before the move (with the CHAP
secret handed over by the source), the source disconnects them after it, nothing is
copied, and the guest reads its markers back on the destination."""

import os
import unittest

import vntest
from test_11_volumes import VOLUME_DRIVERS, first_sector, iscsi_volume, nfs_volume


class VolumeMigration(vntest.AgentTestCase):
    @classmethod
    def setUpClass(cls):
        vntest.start_nethost_pair()
        vntest.harness("storage-start", "na")
        vntest.ENV.update(vntest._load_env())

    @classmethod
    def tearDownClass(cls):
        vntest.harness("storage-stop", "na")
        vntest.stop_nethost("na")
        vntest.stop_nethost("nb")

    def secrets(self, key):
        return vntest.in_host(key, "virsh", "-q", "secret-list", check=True)[1]

    def test_guest_with_volumes_moves(self):
        extra = dict(VOLUME_DRIVERS)
        a = self.agent("na", extra=dict(extra, **{"libvirt.guest_uid_min": "30000",
                                                 "libvirt.guest_uid_max": "30999"}))
        b = self.agent("nb", extra=dict(extra, **{"libvirt.guest_uid_min": "31000",
                                                 "libvirt.guest_uid_max": "31999"}))
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        path = os.path.join(vntest.ENV["STORAGE_EXPORT_DIR"], "volume-move.raw")
        with open(path, "wb") as f:
            f.truncate(64 << 20)
        with open(os.path.join(vntest.ENV["STORAGE_LUN_DIR"], "lun3.img"), "r+b") as f:
            f.write(b"\0" * 4096)
        nv = nfs_volume("volume-move.raw")
        nv["connection_info"]["data"]["export"] = "203.0.113.1:" + vntest.ENV["STORAGE_EXPORT_DIR"]
        iv = iscsi_volume(3, portals=False)
        iv["connection_info"]["data"]["target_portal"] = "203.0.113.1:3260"
        args = vntest.build_args("vol-mover")
        args["block_device_mapping"] = [nv, iv]
        r = self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        self.assertEqual(r["vm_state"], "active", r)
        u = args["instance"]["uuid"]
        self.assertEqual([v["device_name"] for v in r["block_device_mapping"]], ["vde", "vdf"])
        markers = {}
        for v in (nv, iv):
            vid = v["volume_id"][:20]
            vntest.wait_for(lambda: "VIRTNODE-VOL-WROTE %s" % vid in a.console(u), 120,
                            what="the guest wrote to volume %s" % vid)
            line = [l for l in a.console(u).splitlines()
                    if l.startswith("VIRTNODE-VOL-WROTE %s" % vid)][-1]
            markers[v["volume_id"]] = line.split()[-1]
        self.assertEqual(first_sector(path), markers[nv["volume_id"]])
        self.assertIn(iv["volume_id"], self.secrets("na"))
        self.assertNotIn(iv["volume_id"], self.secrets("nb"))
        self.rpc.cast(a.host, "live_migration", version="1.1", instance_uuid=u, dest_host=b.host)

        m = self.rpc.wait_migration_ended(a.host, u, 240)
        self.assertEqual(m["status"], "completed", m)
        self.assertIn(u, vntest.domain_uuids("nb"))
        # the destination holds the secret now, the source let go of it
        self.assertIn(iv["volume_id"], self.secrets("nb"))
        self.assertNotIn(iv["volume_id"], self.secrets("na"))
        got = self.rpc.call(b.host, "get_instance", instance_uuid=u)
        self.assertEqual([v["volume_id"] for v in got["block_device_mapping"]],
                         [nv["volume_id"], iv["volume_id"]])
        # on the destination, after a detach and re-attach, the guest reads its markers
        for v in (nv, iv):
            self.rpc.call(b.host, "detach_volume", version="1.3", timeout=120, instance_uuid=u,
                          volume_id=v["volume_id"])
            vntest.wait_for(lambda: "VIRTNODE-VOL-REMOVED %s" % v["volume_id"][:20]
                            in b.console(u), 60, what="volume gone from the guest")
            self.rpc.call(b.host, "attach_volume", version="1.3", timeout=120, instance_uuid=u,
                          block_device=v)
            vid = v["volume_id"][:20]
            vntest.wait_for(lambda: "VIRTNODE-VOL-READ %s" % vid in b.console(u), 90,
                            what="the guest read volume %s on the destination" % vid)
            line = [l for l in b.console(u).splitlines()
                    if l.startswith("VIRTNODE-VOL-READ %s" % vid)][-1]
            self.assertEqual(line.split()[-1], markers[v["volume_id"]])
        print("volume migration: %s, downtime %s ms; both markers read back on the destination"
              % (m["status"], m.get("downtime_ms")))
        self.rpc.call(b.host, "terminate_instance", timeout=300, instance_uuid=u)
        self.assertNotIn(iv["volume_id"], self.secrets("nb"))


if __name__ == "__main__":
    unittest.main()
