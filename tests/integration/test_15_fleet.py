"""A fleet deployed by the Ansible role, for real: two bare machines (tests/lib/harness.sh
fleet-start: overlay roots in namespaces of their own, sshd only, a firewall that drops
what it does not know) get the built .deb, libvirtd and QEMU configured for live migration
with TLS certificates from a CA this test makes (libvirtd's, and QEMU's own for the
migration stream, its key encrypted), the firewall opened for the migration network, and the agent with the package's default paths.  A second run changes nothing,
--check passes, a guest built on one host live-migrates to the other, and a newer package
rolled out by the role restarts the agents with it."""

import json
import os
import re
import shutil
import subprocess
import time
import unittest

import vntest
from vntest import Rpc

ANSIBLE = os.path.join(vntest.SRC, "deploy", "ansible")
HOSTS = ("fleet-1", "fleet-2")
QEMU_TLS_PASSPHRASE = "fleet-qemu-tls"


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """A CA, and for each host a key and a certificate naming it (server and client)."""
    os.makedirs(d, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", "/CN=fleet test CA",
            cwd=d)
    for n, h in enumerate(HOSTS, 1):
        with open(os.path.join(d, h + ".ext"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n"
                    "subjectAltName=DNS:%s,IP:198.51.100.%d\n" % (h, n))
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", h + "-key.pem", "-out", h + ".csr", "-subj", "/O=fleet/CN=" + h, cwd=d)
        openssl("x509", "-req", "-in", h + ".csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", h + ".ext", "-out", h + ".pem",
                cwd=d)
        # the same key PKCS#8-encrypted, for QEMU's native TLS
        openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", h + "-key.pem", "-out",
                h + "-qemu-key.pem", "-passout", "pass:" + QEMU_TLS_PASSPHRASE, cwd=d)


class Fleet(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        vntest.harness("fleet-start")
        cls.env = vntest._load_env()

    @classmethod
    def tearDownClass(cls):
        vntest.harness("fleet-stop")

    def setUp(self):
        self.dir = os.path.join(vntest.RUN, "fleet", "deploy-%d" % os.getpid())
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.rpc = Rpc()
        self.proxy = {}
        for n, h in enumerate(HOSTS, 1):
            self.proxy[h] = ("ProxyCommand=nsenter --net=/proc/%s/ns/net socat STDIO "
                             "TCP:127.0.0.1:22" % self.env["FLEET_%d_PID" % n])

    def tearDown(self):
        self.rpc.close()

    def ssh(self, host, command, check=True, timeout=120):
        r = subprocess.run(
            ["ssh", "-i", self.env["FLEET_SSH_KEY"], "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o",
             self.proxy[host], "root@" + host, command],
            capture_output=True, text=True, timeout=timeout)
        if check:
            self.assertEqual(r.returncode, 0, "%s: %s\n%s%s" % (host, command, r.stdout, r.stderr))
        return r.stdout

    def package(self, version=None):
        out = os.path.join(self.dir, "pkg-%s" % (version or "first"))
        return vntest.build_package(out, version)[0]

    def inventory(self, deb, pki):
        hosts = {}
        for n, h in enumerate(HOSTS, 1):
            hosts[h] = {
                # (the ProxyCommand connects; the name keeps ssh's shared connections apart)
                "ansible_host": h,
                "ansible_ssh_common_args": "-o '%s'" % self.proxy[h],
                "virtnode_migration_address": "198.51.100.%d" % n,
                "virtnode_libvirt_tls_cert": os.path.join(pki, h + ".pem"),
                "virtnode_libvirt_tls_key": os.path.join(pki, h + "-key.pem"),
                "virtnode_qemu_tls_key": os.path.join(pki, h + "-qemu-key.pem"),
            }
        inv = {"compute": {"hosts": hosts, "vars": {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": self.env["FLEET_SSH_KEY"],
            "ansible_ssh_extra_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "virtnode_deb": deb,
            # the machines reach no archive: every package but virtnode's is on them
            "virtnode_apt_update": False,
            "virtnode_service_manager": "direct",
            "virtnode_transport_urls": ["amqp://guest:guest@127.0.0.1:%s/" %
                                        vntest.ENV["AMQP_PORT"]],
            "virtnode_db_connection": "host=127.0.0.1 port=%s user=postgres dbname=postgres" %
                                      vntest.ENV["PG_PORT"],
            "virtnode_db_password": "not-needed-by-trust-auth",
            "virtnode_virt_type": "qemu",
            "virtnode_libvirt_tls_ca": os.path.join(pki, "ca.pem"),
            "virtnode_live_migration_native_tls": True,
            "virtnode_qemu_tls_key_passphrase": QEMU_TLS_PASSPHRASE,
            "virtnode_firewall": "iptables",
            "virtnode_migration_sources": ["198.51.100.0/24"],
        }}}
        path = os.path.join(self.dir, "inventory.json")
        with open(path, "w") as f:
            json.dump(inv, f)
        return path

    def play(self, inventory, extra=()):
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ANSIBLE, "ansible.cfg"),
                   ANSIBLE_LOCAL_TEMP=os.path.join(self.dir, "tmp"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_FORKS="2")
        r = subprocess.run(["ansible-playbook", "-i", inventory] + list(extra) +
                           [os.path.join(ANSIBLE, "site.yml")],
                           cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=900)
        self.assertEqual(r.returncode, 0, r.stdout[-6000:] + r.stderr[-2000:])
        changed = {}
        for h in HOSTS:
            recap = re.search(r"%s\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0" % h,
                              r.stdout)
            self.assertIsNotNone(recap, r.stdout[-3000:])
            changed[h] = int(recap.group(1))
        return changed, r.stdout

    def agent_pid(self, host):
        return int(self.ssh(host, "cat /var/lib/virtnode/virtnoded.pid"))

    def test_role_deploys_a_fleet_that_live_migrates(self):
        pki = os.path.join(self.dir, "pki")
        make_pki(pki)
        self.deb = self.package()
        inv = self.inventory(self.deb, pki)

        t0 = time.monotonic()
        changed, _ = self.play(inv)
        print("fleet: first run %.0f s, changed %s" % (time.monotonic() - t0, changed))
        for h in HOSTS:
            self.assertGreater(changed[h], 0)
        for n, h in enumerate(HOSTS, 1):
            # the package, its user and group, the configuration readable by that group
            self.assertIn("install ok installed",
                          self.ssh(h, "dpkg-query -W -f='${Status}' virtnode"))
            self.assertEqual(self.ssh(h, "id -gn virtnode").strip(), "virtnode")
            self.assertEqual(self.ssh(h, "stat -c '%a %U %G' /etc/virtnode/virtnode.conf").split(),
                             ["640", "root", "virtnode"])
            conf = self.ssh(h, "cat /etc/virtnode/virtnode.conf")
            self.assertNotIn("not-needed-by-trust-auth", conf)
            self.assertIn("live_migration_target_uri = qemu+tls://$host/system", conf)
            # the package's default paths, no override
            self.assertNotIn("instances_path", conf)
            # libvirtd on the migration address with TLS, nothing in clear
            listening = self.ssh(h, "ss -Hltn")
            self.assertIn("198.51.100.%d:16514" % n, listening)
            self.assertNotIn(":16509", listening)
            self.assertIn("virtnode live migration", self.ssh(h, "iptables -S INPUT"))
            qemu_conf = self.ssh(h, "cat /etc/libvirt/qemu.conf")
            self.assertIn("migration_port_min = 49152", qemu_conf)
            # QEMU's native TLS: the option, the encrypted key readable by every guest's
            # uid, the passphrase only in libvirt's private secret
            self.assertIn("live_migration_with_native_tls = true", conf)
            self.assertIn('migrate_tls_x509_secret_uuid = "', qemu_conf)
            self.assertEqual(self.ssh(h, "stat -c %a /etc/pki/qemu/server-key.pem").strip(),
                             "644")
            self.assertIn("ENCRYPTED PRIVATE KEY", self.ssh(h, "cat /etc/pki/qemu/client-key.pem"))
            self.assertIn("virtnode-migration-tls", self.ssh(h, "virsh -q secret-list"))
            self.assertNotIn(QEMU_TLS_PASSPHRASE,
                             self.ssh(h, "cat /etc/libvirt/virtnode-qemu-tls.sha256"))
            vntest.wait_for(lambda: vntest.db_query(
                "SELECT 1 FROM services WHERE host = %s", h), 60, what="the heartbeat of " + h)

        # idempotent, and --check passes on the deployed fleet
        pids = {h: self.agent_pid(h) for h in HOSTS}
        changed, _ = self.play(inv)
        self.assertEqual(changed, {h: 0 for h in HOSTS})
        changed, _ = self.play(inv, extra=["--check"])
        self.assertEqual(changed, {h: 0 for h in HOSTS})
        self.assertEqual({h: self.agent_pid(h) for h in HOSTS}, pids)

        # a guest with the default paths on fleet-1, live-migrated to fleet-2 over libvirt's
        # TLS and the migration ports the role opened (non-shared storage: the disks copy),
        # the stream in QEMU's native TLS
        args = vntest.build_args("fleet-guest")
        u = args["instance"]["uuid"]
        self.rpc.call("fleet-1", "build_and_run_instance", timeout=300, **args)
        console = "/var/lib/virtnode/instances/%s/console.log" % u
        vntest.wait_for(lambda: "VIRTNODE-GUEST-BOOTED" in self.ssh("fleet-1", "cat " + console,
                                                                   check=False), 180,
                        interval=2, what="the guest to boot on fleet-1")
        self.rpc.cast("fleet-1", "live_migration", version="1.1", instance_uuid=u,
                      dest_host="fleet-2")
        m = self.rpc.wait_migration_ended("fleet-1", u, 300, interval=1)
        self.assertEqual(m["status"], "completed", m)
        self.assertEqual(self.ssh("fleet-2", "virsh -q domstate %s" % u).strip(), "running")
        self.assertNotIn(u, self.ssh("fleet-1", "virsh -q list --all --uuid"))
        self.assertEqual(self.rpc.call("fleet-2", "get_instance", instance_uuid=u)["host"],
                         "fleet-2")
        self.rpc.call("fleet-2", "terminate_instance", timeout=300, instance_uuid=u)

        # a newer package rolled out by the role: an upgrade, and the agents restart with it
        newer = self.package(vntest.package_version(self.deb) + ".1")
        changed, _ = self.play(self.inventory(newer, pki))
        for h in HOSTS:
            self.assertGreater(changed[h], 0)
            self.assertTrue(self.ssh(h, "dpkg-query -W -f='${Version}' virtnode").endswith(".1"))
            self.assertNotEqual(self.agent_pid(h), pids[h], "the upgrade restarted the agent")
        self.assertEqual(self.rpc.call("fleet-2", "ping", arg=3)["arg"], 3)


if __name__ == "__main__":
    unittest.main()
