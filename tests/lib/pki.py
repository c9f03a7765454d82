"""Certificates for the tests: a CA and the certificates it signs, written as PEM files.

    python3 pki.py DIR      the harness's set (below), made once per run

DIR/ca.pem, DIR/ca.key           the test CA
DIR/server.pem, server.key       "localhost" only (no IP: connecting to 127.0.0.1 is the
                                 wrong host name)
DIR/client.pem, client.key       a client certificate, CN "vnssl"
DIR/expired.pem, expired.key     a client certificate that expired yesterday
DIR/other-ca.pem                 a CA that signed none of these

    python3 pki.py qemu DIR OUT PASSPHRASE IP NAME

OUT/ holds QEMU's TLS files for a host (qemu.conf's migrate_tls_x509_cert_dir), signed by
DIR's CA: ca-cert.pem, server-cert.pem and client-cert.pem for IP and NAME, and their keys
server-key.pem and client-key.pem as PKCS#8 encrypted with PASSPHRASE. The keys are
world-readable: every guest's QEMU runs under its own uid and must read them, and only
the migrating one is given the passphrase (libvirt's migrate_tls_x509_secret_uuid).
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

    @classmethod
    def load(cls, d, stem="ca"):
        """The CA whose files @d/@stem.pem and @d/@stem.key exist."""
        self = cls.__new__(cls)
        self.dir = d
        self.path = os.path.join(d, stem + ".pem")
        with open(self.path, "rb") as f:
            self.cert = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(d, stem + ".key"), "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), None)
        self.name = self.cert.subject
        return self

    @staticmethod
    def _key_bytes(key):
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    def issue(self, stem, cn, dns=(), ips=(), server=True, client=True, days=(-1, 30),
              key_mode=0o600, out=None, names=None, passphrase=None):
        """Writes @stem.pem and @stem.key (in @out, else the CA's folder; or the two file
        names of @names), valid from now + days[0] to now + days[1], the key encrypted
        when @passphrase is given; returns (cert path, key path)."""
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
        out = out or self.dir
        cp, kp = (os.path.join(out, stem + ".pem"), os.path.join(out, stem + ".key"))
        if names:
            cp, kp = os.path.join(out, names[0]), os.path.join(out, names[1])
        _write(cp, cert.public_bytes(serialization.Encoding.PEM))
        if passphrase is None:
            kb = self._key_bytes(key)
        else:
            kb = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.BestAvailableEncryption(passphrase.encode()))
        _write(kp, kb, key_mode)
        return cp, kp


def harness_set(d):
    ca = CA(d)
    ca.issue("server", "localhost", dns=["localhost"], client=False, key_mode=0o644)
    ca.issue("client", "vnssl", server=False)
    ca.issue("expired", "vnssl", server=False, days=(-10, -1))
    CA(d, stem="other-ca", cn="another CA")


def qemu_set(d, out, passphrase, ip, name, ca_stem="ca", days=(-1, 30)):
    """QEMU's TLS folder @out for host @ip/@name, signed by @d/@ca_stem; the certificates
    valid from now + days[0] to now + days[1]."""
    ca = CA.load(d, ca_stem)
    os.makedirs(out, exist_ok=True)
    os.chmod(out, 0o755)
    with open(ca.path, "rb") as f:
        _write(os.path.join(out, "ca-cert.pem"), f.read())
    for role in ("server", "client"):
        ca.issue(role, name, dns=[name], ips=[ip], out=out, key_mode=0o644,
                 names=(role + "-cert.pem", role + "-key.pem"), passphrase=passphrase,
                 server=role == "server", client=role == "client", days=days)


if __name__ == "__main__":
    if sys.argv[1] == "qemu":
        qemu_set(*sys.argv[2:7])
    else:
        harness_set(sys.argv[1])
