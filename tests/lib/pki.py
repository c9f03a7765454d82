"""Certificates for the tests: a CA and the certificates it signs, written as PEM files.

    python3 pki.py DIR      the harness's set (below), made once per run

DIR/ca.pem, DIR/ca.key           the test CA
DIR/server.pem, server.key       "localhost" only (no IP: connecting to 127.0.0.1 is the
                                 wrong host name)
DIR/client.pem, client.key       a client certificate, CN "vnssl"
DIR/expired.pem, expired.key     a client certificate that expired yesterday
DIR/other-ca.pem                 a CA that signed none of these
"""

import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn, org="virtnode tests"):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


class CA:
    """A certificate authority whose files are @d/@stem.pem and @d/@stem.key."""

    def __init__(self, d, stem="ca", cn="virtnode test CA"):
        os.makedirs(d, exist_ok=True)
        self.dir = d
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = _name(cn)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), True)
                     .sign(self.key, hashes.SHA256()))
        self.path = os.path.join(d, stem + ".pem")
        _write(self.path, self.cert.public_bytes(serialization.Encoding.PEM))
        _write(os.path.join(d, stem + ".key"), self._key_bytes(self.key), 0o600)

    @staticmethod
    def _key_bytes(key):
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    def issue(self, stem, cn, dns=(), ips=(), server=True, client=True, days=(-1, 30),
              key_mode=0o600):
        """Writes @stem.pem and @stem.key, valid from now + days[0] to now + days[1];
        returns (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now + datetime.timedelta(days=days[0]))
             .not_valid_after(now + datetime.timedelta(days=days[1]))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
             .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                          False), True)
             .add_extension(x509.ExtendedKeyUsage(usages), False))
        sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i))
                                                 for i in ips]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), False)
        cert = b.sign(self.key, hashes.SHA256())
        cp, kp = (os.path.join(self.dir, stem + ".pem"), os.path.join(self.dir, stem + ".key"))
        _write(cp, cert.public_bytes(serialization.Encoding.PEM))
        _write(kp, self._key_bytes(key), key_mode)
        return cp, kp


def harness_set(d):
    ca = CA(d)
    ca.issue("server", "localhost", dns=["localhost"], client=False, key_mode=0o644)
    ca.issue("client", "vnssl", server=False)
    ca.issue("expired", "vnssl", server=False, days=(-10, -1))
    CA(d, stem="other-ca", cn="another CA")


if __name__ == "__main__":
    harness_set(sys.argv[1])
