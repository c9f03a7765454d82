"""The host's own state: set_host_enabled and host_maintenance_mode.  A disabled host
refuses builds and incoming live migrations with ComputeHostDisabled, keeps its guests
running and serving, says so in its service row (disabled, disabled_reason), and stays
disabled across a restart; maintenance mode disables and lists what still runs."""

import unittest

import vntest


class HostState(vntest.AgentTestCase):
    def service(self, host):
        rows = vntest.db_query("SELECT disabled, disabled_reason FROM services WHERE host = %s",
                               host)
        return tuple(rows[0]) if rows else None

    def test_disable_maintenance_enable(self):
        a = self.agent("a").start()
        b = self.agent("b").start()
        args = vntest.build_args("before-disable")
        u = args["instance"]["uuid"]
        self.rpc.call(a.host, "build_and_run_instance", timeout=300, **args)
        vntest.wait_for(lambda: self.service(a.host) == (False, None), 30,
                        what="an enabled service row")

        r = self.rpc.call(a.host, "set_host_enabled", version="1.3", enabled=False,
                          reason="disk replacement")
        self.assertEqual((r["enabled"], r["disabled_reason"]), (False, "disk replacement"))
        vntest.wait_for(lambda: self.service(a.host) == (True, "disk replacement"), 10,
                        what="the service row to say disabled")
        refused = vntest.build_args("while-disabled")
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "build_and_run_instance", timeout=60, **refused)
        self.assertEqual(e.exception.exc_type, "ComputeHostDisabled")
        self.assertIn("disk replacement", str(e.exception))
        self.assertNotIn(refused["instance"]["uuid"], vntest.domain_uuids("a"))
        # an incoming migration is refused before anything is prepared
        moving = vntest.build_args("to-disabled")
        mu = moving["instance"]["uuid"]
        self.rpc.call(b.host, "build_and_run_instance", timeout=300, **moving)
        self.rpc.cast(b.host, "live_migration", version="1.1", instance_uuid=mu,
                      dest_host=a.host)

        m = self.rpc.wait_migration_ended(b.host, mu, 120)
        self.assertNotEqual(m["status"], "completed")
        self.assertIn("ComputeHostDisabled", m.get("error") or "", m)
        self.assertIn(mu, vntest.domain_uuids("b"))
        # its guests keep running and are served
        self.assertEqual(self.rpc.call(a.host, "get_instance", instance_uuid=u)["vm_state"],
                         "active")
        # a restart keeps the host disabled
        a.stop()
        a.start()
        with self.assertRaises(self.rpc.om.RemoteError) as e:
            self.rpc.call(a.host, "build_and_run_instance", timeout=60,
                          **vntest.build_args("after-restart"))
        self.assertEqual(e.exception.exc_type, "ComputeHostDisabled")
        vntest.wait_for(lambda: self.service(a.host) == (True, "disk replacement"), 10,
                        what="the service row still disabled after the restart")

        # maintenance: disabled, and what still runs
        r = self.rpc.call(a.host, "host_maintenance_mode", version="1.3", mode=True)
        self.assertTrue(r["maintenance"])
        self.assertEqual([i["uuid"] for i in r["instances"]], [u])
        vntest.wait_for(lambda: self.service(a.host) == (True, "maintenance"), 10,
                        what="the service row to say maintenance")
        r = self.rpc.call(a.host, "host_maintenance_mode", version="1.3", mode=False)
        self.assertEqual((r["enabled"], r["maintenance"]), (True, False))
        vntest.wait_for(lambda: self.service(a.host) == (False, None), 10,
                        what="the service row enabled again")
        ok = vntest.build_args("after-enable")
        r = self.rpc.call(a.host, "build_and_run_instance", timeout=300, **ok)
        self.assertEqual(r["vm_state"], "active")
        for host, g in ((a.host, u), (a.host, ok["instance"]["uuid"]), (b.host, mu)):
            self.rpc.call(host, "terminate_instance", timeout=300, instance_uuid=g)
        print("host state: builds and an incoming migration refused while disabled, across a "
              "restart; maintenance listed %d guest; enabled again" % 1)


if __name__ == "__main__":
    unittest.main()
