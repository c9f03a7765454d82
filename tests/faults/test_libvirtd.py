"""Fault: libvirtd restarts while guests run.  The guests are untouched (same QEMU process,
heartbeats go on), the agent is serving again within 5 s of libvirtd's return, and
operations work afterwards."""

import time
import unittest

import vntest


class LibvirtdRestart(vntest.AgentTestCase):
    def test_libvirtd_restart_with_running_guests(self):
        a = self.agent("a").start()
        uuids = []
        for i in range(2):
            args = vntest.build_args("lvd-%d" % i)
            uuids.append(args["instance"]["uuid"])
            self.assertEqual(self.rpc.call("host-a", "build_and_run_instance", timeout=300,
                                           **args)["vm_state"], "active")
        for u in uuids:
            vntest.wait_for(lambda: "VIRTNODE-HEARTBEAT" in a.console(u), 60, what="heartbeat")
        pids = {u: vntest.qemu_pid(u) for u in uuids}
        beats = {u: a.console(u).count("VIRTNODE-HEARTBEAT") for u in uuids}

        vntest.harness("libvirtd-restart", "a")
        back = time.monotonic()
        vntest.wait_for(a.ready, 30, interval=0.1, what="agent ready again")
        recover = time.monotonic() - back

        time.sleep(3)
        for u in uuids:
            self.assertEqual(vntest.qemu_pid(u), pids[u], "the guest's QEMU was replaced")
            self.assertGreater(a.console(u).count("VIRTNODE-HEARTBEAT"), beats[u],
                               "the guest stopped")
            got = self.rpc.call("host-a", "get_instance", instance_uuid=u)
            self.assertEqual((got["vm_state"], got["power_state"]), ("active", 1))
        # the agent works with the new libvirtd: a power operation and a delete
        r = self.rpc.call("host-a", "stop_instance", timeout=300, instance_uuid=uuids[0])
        self.assertEqual(r["vm_state"], "stopped")
        for u in uuids:
            self.rpc.call("host-a", "terminate_instance", timeout=300, instance_uuid=u)
        print("libvirtd restart: guests 2, replaced 0, stopped 0, agent serving again "
              "%.1f s after libvirtd's return" % recover)
        self.assertLess(recover, 5)


if __name__ == "__main__":
    unittest.main()
