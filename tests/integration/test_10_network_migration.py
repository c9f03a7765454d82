"""A guest with a network port live-migrates between two hosts that share the physical
network (the harness's "na" and "nb", each in a network namespace of its own, their
physical interfaces the ends of one link): the destination plugs the port before the
move, the source unplugs after it, and a guest on the destination keeps its pings
answered across the move (the lost ones are reported)."""

import time
import unittest
import uuid as uuidlib

import vntest
from test_09_network import port


class NetworkMigration(vntest.AgentTestCase):
    @classmethod
    def setUpClass(cls):
        vntest.start_nethost_pair()

    @classmethod
    def tearDownClass(cls):
        vntest.stop_nethost("na")
        vntest.stop_nethost("nb")

    def links(self, key):
        import json
        rc, out = vntest.in_host(key, "ip", "-j", "link", "show", check=True)
        return {l["ifname"] for l in json.loads(out)}

    def boot(self, a, name, ports, **settings):
        args = vntest.build_args(name, metadata={"vn.%s" % k: v for k, v in settings.items()})
        args["networks"] = ports
        r = self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        self.assertEqual(r["vm_state"], "active", r)
        u = args["instance"]["uuid"]
        vntest.wait_for(lambda: "VIRTNODE-NET " in a.console(u), 90, what="%s networked" % name)
        return u

    def test_guest_with_a_port_moves_and_keeps_answering(self):
        # hosts that share storage keep their guest identities apart (docs/operations.md)
        a = self.agent("na", extra={"libvirt.guest_uid_min": "30000",
                                    "libvirt.guest_uid_max": "30999"})
        b = self.agent("nb", extra={"libvirt.guest_uid_min": "31000",
                                    "libvirt.guest_uid_max": "31999"})
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        net = str(uuidlib.uuid4())
        bridge = "brq" + net.replace("-", "")[:11]
        mover = port(net, "192.0.2.82")
        watcher = self.boot(b, "watcher", [port(net, "192.0.2.81")], peer="192.0.2.82")
        u = self.boot(a, "mover", [mover], peer="192.0.2.81")
        vntest.wait_for(lambda: b.console(watcher).count("PING-OK") >= 3, 60,
                        what="pings across the hosts")
        fails_before = b.console(watcher).count("PING-FAIL")
        t0 = time.monotonic()
        self.rpc.cast(a.host, "live_migration", version="1.1", instance_uuid=u, dest_host=b.host)

        m = self.rpc.wait_migration_ended(a.host, u, 180)
        self.assertEqual(m["status"], "completed", m)
        took = time.monotonic() - t0
        oks = b.console(watcher).count("PING-OK")
        vntest.wait_for(lambda: b.console(watcher).count("PING-OK") >= oks + 3, 30,
                        what="pings answered after the move")
        lost = b.console(watcher).count("PING-FAIL") - fails_before
        print("network migration: %.1f s, downtime %s ms, pings lost %d" %
              (took, m.get("downtime_ms"), lost))
        self.assertIn(u, vntest.domain_uuids("nb"))
        # the source let go of the port: its bridge went with its last port
        self.assertNotIn(bridge, self.links("na"))
        self.assertIn(bridge, self.links("nb"))
        got = self.rpc.call(b.host, "get_instance", instance_uuid=u)
        self.assertEqual([p["port_id"] for p in got["ports"]], [mover["port_id"]])
        self.assertLessEqual(lost, 5)
        for g in (u, watcher):
            self.rpc.call(b.host, "terminate_instance", timeout=300, instance_uuid=g)
        self.assertNotIn(bridge, self.links("nb"))


if __name__ == "__main__":
    unittest.main()
