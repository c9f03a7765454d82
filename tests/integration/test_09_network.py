"""Guest networks on a real libvirt host in a network namespace of its own (the harness's
"na"): bridges made by the agent, taps made by libvirt, port security by libvirt's
nwfilter, addresses from the config drive.  Only addresses inside that namespace and its
guests carry traffic (192.0.2.0/24 and 198.51.100.0/24, documentation ranges)."""

import json
import os
import time
import unittest
import uuid as uuidlib

import vntest

ALLOW_PING = [{"rules": [{"direction": "egress", "ethertype": "IPv4"},
                         {"direction": "ingress", "ethertype": "IPv4", "protocol": "icmp"}]}]


def port(net, ip, physnet="physnet1", groups=None, security=True, cidr="192.0.2.0/24"):
    pid = str(uuidlib.uuid4())
    return {"port_id": pid, "network_id": net,
            "mac": "fa:16:3e:%02x:%02x:%02x" % tuple(os.urandom(3)),
            "fixed_ips": [{"ip_address": ip, "subnet": {"cidr": cidr, "dns": []}}],
            "mtu": 1400, "network_type": "flat", "physical_network": physnet,
            "port_security": security,
            "security_groups": (groups if groups is not None else ALLOW_PING)
            if security else []}


class Network(vntest.AgentTestCase):
    @classmethod
    def setUpClass(cls):
        vntest.start_nethost("na")

    @classmethod
    def tearDownClass(cls):
        vntest.stop_nethost("na")

    def links(self):
        rc, out = vntest.in_host("na", "ip", "-j", "-d", "link", "show", check=True)
        return {l["ifname"]: l for l in json.loads(out)}

    def bridge(self, net):
        return "brq" + net.replace("-", "")[:11]

    def boot(self, a, name, ports, **settings):
        args = vntest.build_args(name, metadata={"vn.%s" % k: v for k, v in settings.items()})
        args["networks"] = ports
        r = self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        self.assertEqual(r["vm_state"], "active", r)
        u = args["instance"]["uuid"]
        vntest.wait_for(lambda: "VIRTNODE-NET " in a.console(u), 90,
                        what="%s configured from its config drive" % name)
        return u

    def count(self, a, u, word):
        return a.console(u).count(word)

    def test_guests_on_networks(self):
        """Two guests on one network reach each other with the addresses of their config
        drive; a guest on another network (same subnet, other bridge) cannot; a guest that
        uses another IP or MAC than its port's loses its traffic; the last guest of a
        network takes its bridge with it."""
        a = self.agent("na").start()
        net1, net2 = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        g1 = self.boot(a, "net-g1", [port(net1, "192.0.2.11")], peer="192.0.2.12")
        g2 = self.boot(a, "net-g2", [port(net1, "192.0.2.12")], peer="192.0.2.11")
        g3 = self.boot(a, "net-g3", [port(net2, "192.0.2.13", physnet="physnet2")],
                       peer="192.0.2.11")
        g4 = self.boot(a, "net-spoof-ip", [port(net1, "192.0.2.14")], peer="192.0.2.11",
                       spoof="ip")
        g5 = self.boot(a, "net-spoof-mac", [port(net1, "192.0.2.15")], peer="192.0.2.11",
                       spoof="mac")
        self.assertIn("VIRTNODE-NET eth0 192.0.2.11/24", a.console(g1))
        links = self.links()
        for net in (net1, net2):
            b = self.bridge(net)
            self.assertIn(b, links)
            self.assertEqual(links[b]["mtu"], 1400)
        vntest.wait_for(lambda: self.count(a, g1, "PING-OK") >= 3 and
                        self.count(a, g2, "PING-OK") >= 3, 60, what="g1 and g2 ping each other")
        for u, what in ((g3, "another network"), (g4, "a spoofed IP"), (g5, "a spoofed MAC")):
            vntest.wait_for(lambda: self.count(a, u, "PING-FAIL") >= 4, 60,
                            what="4 pings tried by the guest with %s" % what)
            self.assertEqual(self.count(a, u, "PING-OK"), 0, "a guest with %s got through" % what)
        print("networks: g1<->g2 %d/%d pings, other network %d, spoofed IP %d, spoofed MAC %d"
              % (self.count(a, g1, "PING-OK"), self.count(a, g2, "PING-OK"),
                 self.count(a, g3, "PING-OK"), self.count(a, g4, "PING-OK"),
                 self.count(a, g5, "PING-OK")))
        # the bridge of net2 goes with its only guest; net1's stays while guests use it
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=g3)
        links = self.links()
        self.assertNotIn(self.bridge(net2), links)
        self.assertIn(self.bridge(net1), links)
        for u in (g1, g2, g4, g5):
            self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)
        self.assertNotIn(self.bridge(net1), self.links())
        self.assertEqual([l for l in self.links() if l.startswith("tap")], [])

    def test_bad_ports_touch_nothing(self):
        """Every port of the bad-input corpus is InvalidInput over RPC, and so are ports the
        host cannot serve (an unknown physical network, an MTU above the interface's);
        nothing is made."""
        a = self.agent("na").start()
        good = json.load(open(os.path.join(vntest.SRC, "tests", "corpus", "good_port.json")))
        bad = json.load(open(os.path.join(vntest.SRC, "tests", "corpus", "bad_ports.json")))
        before = sorted(self.links())
        cases = []
        for c in bad:
            p = json.loads(json.dumps(good))
            p.update(c.get("set", {}))
            for k in c.get("del", []):
                p.pop(k, None)
            p["fixed_ips"][0].update(c.get("set_ip", {}))
            p["fixed_ips"][0]["subnet"].update(c.get("set_subnet", {}))
            p["security_groups"][0]["rules"][0].update(c.get("set_rule", {}))
            p = {k: v for k, v in p.items() if v is not None}
            cases.append((c["why"], [p, p] if c.get("twice") else [p], c["expect"]))
        cases.append(("unknown physical network", [dict(good, physical_network="physnet9")],
                      "physnet9"))
        cases.append(("MTU above the interface's", [dict(good, mtu=9000)], "MTU 9000"))
        for why, ports, expect in cases:
            args = vntest.build_args("bad-port")
            args["networks"] = ports
            with self.assertRaises(self.rpc.om.RemoteError, msg=why) as e:
                self.rpc.call(a.host, "build_and_run_instance", timeout=60, **args)
            self.assertEqual(e.exception.exc_type, "InvalidInput", why)
            self.assertIn(expect, str(e.exception), why)
            self.assertNotIn(args["instance"]["uuid"], vntest.domain_uuids("na"))
        self.assertEqual(sorted(self.links()), before, "a bad port left a device")
        print("bad ports: %d refused with InvalidInput, nothing made" % len(cases))

    def test_security_group_rule_opens_and_closes_a_port(self):
        """A rule added to a running guest's port opens a TCP port (busybox nc answers),
        removing it closes the port again; no restart of the guest."""
        a = self.agent("na").start()
        net = str(uuidlib.uuid4())
        srv_port = port(net, "192.0.2.21")
        srv = self.boot(a, "sg-server", [srv_port], listen="7777")
        cli = self.boot(a, "sg-client", [port(net, "192.0.2.22")], probe="192.0.2.21:7777")
        vntest.wait_for(lambda: self.count(a, cli, "NC-FAIL") >= 3, 60, what="closed port")
        self.assertEqual(self.count(a, cli, "NC-OK"), 0)
        opened = ALLOW_PING[0]["rules"] + [{"direction": "ingress", "ethertype": "IPv4",
                                            "protocol": "tcp", "port_range_min": 7777,
                                            "port_range_max": 7777,
                                            "remote_ip_prefix": "192.0.2.0/24"}]
        r = self.rpc.call(a.host, "update_port_security", version="1.2", instance_uuid=srv,
                          port_id=srv_port["port_id"], security_groups=[{"rules": opened}])
        self.assertEqual(len(r["ports"][0]["security_groups"][0]["rules"]), 3)
        vntest.wait_for(lambda: self.count(a, cli, "NC-OK") >= 2, 30, what="the port opened")
        self.rpc.call(a.host, "update_port_security", version="1.2", instance_uuid=srv,
                      port_id=srv_port["port_id"], security_groups=ALLOW_PING)
        oks = self.count(a, cli, "NC-OK")
        time.sleep(2)  # a probe under way when the rule went may still answer
        oks = self.count(a, cli, "NC-OK")
        fails = self.count(a, cli, "NC-FAIL")
        vntest.wait_for(lambda: self.count(a, cli, "NC-FAIL") >= fails + 3, 30,
                        what="the port closed again")
        self.assertEqual(self.count(a, cli, "NC-OK"), oks, "the port stayed open")
        print("security groups: closed %d probes, opened %d, closed again" % (fails, oks))
        for u in (srv, cli):
            self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)

    def test_attach_and_detach_interface(self):
        """attach_interface gives a running guest a working NIC on another network;
        detach_interface removes it, its tap, and its network's bridge (the last port)."""
        a = self.agent("na").start()
        net1, net2 = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        # net2 on its own subnet (198.51.100.0/24, documentation range too): the guest
        # routes to the peer through the new NIC only
        peer = self.boot(a, "hot-peer", [port(net2, "198.51.100.42", physnet="physnet2",
                                              cidr="198.51.100.0/24")])
        g = self.boot(a, "hot-guest", [port(net1, "192.0.2.41")],
                      hotplug_ip="198.51.100.51/24", hotplug_peer="198.51.100.42")
        extra = port(net2, "198.51.100.51", physnet="physnet2", cidr="198.51.100.0/24")
        r = self.rpc.call(a.host, "attach_interface", version="1.2", timeout=120,
                          instance_uuid=g, port=extra)
        self.assertEqual([p["port_id"] for p in r["ports"]][-1], extra["port_id"])
        tap = "tap" + extra["port_id"].replace("-", "")[:11]
        self.assertIn(tap, self.links())
        vntest.wait_for(lambda: "VIRTNODE-NIC-ADDED" in a.console(g) and extra["mac"] in
                        a.console(g), 60, what="the guest sees the new NIC")
        vntest.wait_for(lambda: self.count(a, g, "HOTPLUG-PING-OK") >= 3, 60,
                        what="traffic through the new NIC")
        # a second attach of the same port is refused, nothing changes
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "attach_interface", version="1.2", instance_uuid=g, port=extra)
        self.assertEqual(e.exception.exc_type, "InvalidInput")
        r = self.rpc.call(a.host, "detach_interface", version="1.2", timeout=120,
                          instance_uuid=g, port_id=extra["port_id"])
        self.assertEqual(len(r["ports"]), 1)
        vntest.wait_for(lambda: "VIRTNODE-NIC-REMOVED" in a.console(g), 30,
                        what="the guest lost the NIC")
        links = self.links()
        self.assertNotIn(tap, links)
        self.assertIn(self.bridge(net2), links)  # the peer still uses net2
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=peer)
        self.assertNotIn(self.bridge(net2), self.links())
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=g)

    def test_kill9_keeps_ports_and_cleans_half_plugs(self):
        """kill -9 of the agent: the running guests' ports keep working across its restart,
        and a bridge a half-done plug left (ours, unused) is removed."""
        a = self.agent("na").start()
        net = str(uuidlib.uuid4())
        g1 = self.boot(a, "k9-g1", [port(net, "192.0.2.61")], peer="192.0.2.62")
        g2 = self.boot(a, "k9-g2", [port(net, "192.0.2.62")], peer="192.0.2.61")
        vntest.wait_for(lambda: self.count(a, g1, "PING-OK") >= 2, 60, what="pings")
        # what a crash between bridge and domain leaves: our bridge, no guest on it
        stale = str(uuidlib.uuid4())
        b = self.bridge(stale)
        vntest.in_host("na", "ip", "link", "add", b, "type", "bridge", check=True)
        vntest.in_host("na", "ip", "link", "set", b, "alias", "virtnode:" + stale, check=True)
        a.kill9()
        a.start()
        before = self.count(a, g1, "PING-OK")
        vntest.wait_for(lambda: self.count(a, g1, "PING-OK") > before + 3, 30,
                        what="pings after the restart")
        links = self.links()
        self.assertNotIn(b, links, "the stale bridge is still there")
        self.assertIn(self.bridge(net), links)
        for u in (g1, g2):
            self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)
        self.assertNotIn(self.bridge(net), self.links())


if __name__ == "__main__":
    unittest.main()
