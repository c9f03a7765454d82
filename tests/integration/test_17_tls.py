"""TLS on the agent's links, with the CA the harness made (tests/lib/pki.py): AMQP over
TLS with a client certificate and the broker's name verified, PostgreSQL with
sslmode=verify-full and a client certificate.  The servers see TLS connections with the
agent's certificate.  A wrong CA, an expired client certificate and a wrong host name are
each refused with a line naming the link and the reason, and the agent never falls back
to plain text: neither server ever sees a plain connection from it."""

import os
import re
import subprocess
import unittest

import vntest

PKI = vntest.ENV["PKI_DIR"]


def pki(name):
    return os.path.join(PKI, name)


def rabbitmqctl(*args):
    return subprocess.run(["bash", vntest.HARNESS, "rabbitmqctl", vntest.RUN] + list(args),
                          check=True, capture_output=True, text=True).stdout


class Tls(vntest.AgentTestCase):
    @classmethod
    def setUpClass(cls):
        vntest.db_query("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                        "'vnssl') THEN CREATE ROLE vnssl LOGIN SUPERUSER; END IF; END $$")

    def links(self, amqp_host="localhost", amqp_ca="ca.pem", client="client", db_host="localhost",
              db_ca="ca.pem"):
        return {
            "amqp.transport_url": "amqps://guest:guest@%s:%s/" % (amqp_host,
                                                                   vntest.ENV["AMQPS_PORT"]),
            "amqp.ssl_ca_file": pki(amqp_ca),
            "amqp.ssl_cert_file": pki(client + ".pem"),
            "amqp.ssl_key_file": pki(client + ".key"),
            "database.connection": "host=%s port=%s user=vnssl dbname=postgres "
                                   "sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s" % (
                                       db_host, vntest.ENV["PG_PORT"], pki(db_ca),
                                       pki(client + ".pem"), pki(client + ".key")),
        }

    def plain_connections(self, host):
        """What the servers saw of @host's agent outside TLS."""
        amqp = [l for l in rabbitmqctl("list_connections", "ssl", "client_properties").splitlines()
                if host in l and not l.startswith("true")]
        pg = vntest.db_query("SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING "
                             "(pid) WHERE a.usename = 'vnssl' AND NOT s.ssl")[0][0]
        return amqp, pg

    def test_agent_over_tls(self):
        a = self.agent("a", name="tls-good", extra=self.links()).start()
        self.assertEqual(self.rpc.call(a.host, "ping", arg=1)["arg"], 1)
        vntest.wait_for(lambda: vntest.db_query(
            "SELECT 1 FROM services WHERE host = %s", a.host), 30, what="the heartbeat over TLS")
        # the servers' view: TLS, with the agent's client certificate
        conns = [l for l in rabbitmqctl("list_connections", "ssl", "peer_cert_subject",
                                        "client_properties").splitlines() if a.host in l]
        self.assertTrue(conns, "no broker connection of the agent")
        for l in conns:
            self.assertTrue(l.startswith("true"), l)
            self.assertIn("CN=vnssl", l)
        rows = vntest.db_query("SELECT s.ssl, s.client_dn FROM pg_stat_activity a JOIN "
                               "pg_stat_ssl s USING (pid) WHERE a.usename = 'vnssl'")
        self.assertTrue(rows)
        for ssl, dn in rows:
            self.assertTrue(ssl)
            self.assertIn("CN=vnssl", dn)

    def refused(self, name, extra, link, reason):
        a = self.agent("a", name=name, extra=extra)
        a.start(wait=False)
        pattern = re.compile(r"%s.*%s" % (link, reason), re.I)
        vntest.wait_for(lambda: pattern.search(a.log_text()), 30,
                        what="%s: a line naming %s and %s" % (name, link, reason))
        self.assertEqual(self.plain_connections(a.host), ([], 0), "fell back to plain text")
        line = pattern.search(a.log_text()).group(0)
        print("%s: %s" % (name, line))
        a.stop()

    def test_bad_certificates_are_refused(self):
        amqps = r"amqps://(localhost|127\.0\.0\.1):%s/" % vntest.ENV["AMQPS_PORT"]
        good = self.links()
        for name, over, link, reason in [
            ("tls-amqp-ca", {"amqp.ssl_ca_file": pki("other-ca.pem")}, amqps,
             "peer cert verification failed"),
            ("tls-amqp-name", {"amqp.transport_url": self.links(amqp_host="127.0.0.1")[
                "amqp.transport_url"]}, amqps, "hostname verification failed"),
            ("tls-amqp-expired", {"amqp.ssl_cert_file": pki("expired.pem"),
                                  "amqp.ssl_key_file": pki("expired.key")}, amqps,
             "certificate expired"),
            ("tls-db-ca", {"database.connection": self.links(db_ca="other-ca.pem")[
                "database.connection"]}, "database", "certificate verify failed"),
            ("tls-db-name", {"database.connection": self.links(db_host="127.0.0.1")[
                "database.connection"]}, "database", "does not match host name"),
            ("tls-db-expired", {"database.connection": self.links(client="expired")[
                "database.connection"]}, "database", "certificate expired"),
        ]:
            with self.subTest(name):
                self.refused(name, dict(good, **over), link, reason)


if __name__ == "__main__":
    unittest.main()
