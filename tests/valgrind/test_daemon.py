"""The daemon under valgrind, against the real services: start-up, a guest's whole life
(build from an HTTP image, power operations, console, delete), a rejected request, queries,
and a graceful stop.  Valgrind must find no error and no leak.

Run by ctest with label "valgrind" on a build without sanitizers (.ci/run does)."""

import os
import re
import unittest

import vntest


class DaemonUnderValgrind(vntest.AgentTestCase):
    def test_a_guest_lifetime_is_clean(self):
        report = os.path.join(vntest.RUN, "agents", "valgrind-%d.log" % os.getpid())
        a = self.agent("a", wrapper=[
            "valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99", "--num-callers=40", "--log-file=" + report,
            "--suppressions=" + os.path.join(vntest.SRC, "tests", "valgrind.supp")])
        a.start(wait=False)
        a.wait_ready(180)

        args = vntest.build_args("vg-1")
        u = args["instance"]["uuid"]
        r = self.rpc.call(a.host, "build_and_run_instance", timeout=600, **args)
        self.assertEqual(r["vm_state"], "active")
        vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in a.console(u), 120, what="boot")
        for method, kw, state in (("pause_instance", {}, "paused"),
                                  ("unpause_instance", {}, "active"),
                                  ("reboot_instance", {"reboot_type": "HARD"}, "active"),
                                  ("stop_instance", {"clean_shutdown": False}, "stopped"),
                                  ("start_instance", {}, "active")):
            r = self.rpc.call(a.host, method, timeout=300, instance_uuid=u, **kw)
            self.assertEqual(r["vm_state"], state, method)
        self.assertIn("VIRTNODE", self.rpc.call(a.host, "get_console_output", instance_uuid=u))
        self.assertEqual(len(self.rpc.call(a.host, "list_instances")), 1)
        self.assertEqual(self.rpc.call(a.host, "get_host_info")["host"], a.host)
        with self.assertRaises(self.rpc.om.RemoteError):
            self.rpc.call(a.host, "stop_instance", instance_uuid=u, bogus=1)
        self.rpc.call(a.host, "terminate_instance", timeout=300, instance_uuid=u)

        self.assertEqual(a.stop(180), 0)
        with open(report) as f:
            text = f.read()
        summary = re.search(r"ERROR SUMMARY: (\d+) errors", text)
        self.assertIsNotNone(summary, text[-3000:])
        self.assertEqual(summary.group(1), "0", text[-6000:])
        self.assertNotRegex(text, r"(definitely|indirectly) lost: [1-9]")


if __name__ == "__main__":
    unittest.main()
