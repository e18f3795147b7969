"""Test certificates for the TLS listener: two CAs, a server certificate and client
certificates laid out as libvirt's client reads them (`?pkipath=DIR` with cacert.pem,
clientcert.pem, clientkey.pem). Made with python3-cryptography, keys are P-256 (fast).

The extensions are the ones libvirt's client checks on its own side (basic constraints,
key usage with digitalSignature and keyEncipherment, extended key usage clientAuth or
serverAuth), and the server certificate names localhost, 127.0.0.1 and ::1.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORG = "metalvirt tests"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _name(cn, org=ORG):
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def dn(cn, org=ORG):
    """The DN as the daemon (and libvirt) writes it."""
    return f"C=GB,O={org},CN={cn}"


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k):
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def _pem_cert(c):
    return c.public_bytes(serialization.Encoding.PEM)


class CA:
    def __init__(self, cn):
        self.key = _key()
        self.name = _name(cn)
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, cn, server=False, expired=False, org=ORG, names=()):
        """A certificate for `cn`: a client's, or with `server` a server's naming
        localhost, 127.0.0.1, ::1 and each of `names` (host names or IP addresses)."""
        key = _key()
        now = _now()
        if expired:
            start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org)).issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
        )
        if server:
            alt = [x509.DNSName("localhost"),
                   x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                   x509.IPAddress(ipaddress.ip_address("::1"))]
            for n in names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    alt.append(x509.DNSName(n))
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return key, b.sign(self.key, hashes.SHA256())

    def crl(self, revoked_certs):
        now = _now()
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.name)
             .last_update(now - datetime.timedelta(hours=1))
             .next_update(now + datetime.timedelta(days=7))
             .add_extension(x509.CRLNumber(1), critical=False))
        for c in revoked_certs:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                .revocation_date(now - datetime.timedelta(hours=1)).build())
        return b.sign(self.key, hashes.SHA256())


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


class Pki:
    """Everything a TLS test needs, under `root`:

    - server/: serverkey.pem, servercert.pem, cacert.pem (CA 1), crl.pem (revokes
      the client named "revoked")
    - clients/NAME/: a libvirt pkipath per client, in CLIENTS
    """

    # name -> (common name, signed by CA 2, expired, revoked, has a certificate)
    CLIENTS = {
        "nova": ("nova1", False, False, False, True),
        "monitor": ("monitor1", False, False, False, True),
        "stranger": ("stranger", False, False, False, True),
        "expired": ("nova2", False, True, False, True),
        "wrongca": ("nova3", True, False, False, True),
        "revoked": ("nova4", False, False, True, True),
        "nocert": (None, False, False, False, False),
    }

    def __init__(self, root):
        self.root = root
        ca1, ca2 = CA("metalvirt test CA"), CA("another CA")
        self.ca1, self.ca2 = ca1, ca2
        srv = os.path.join(root, "server")
        os.makedirs(srv, exist_ok=True)
        skey, scert = ca1.issue("localhost", server=True)
        _write(self.server("serverkey.pem"), _pem_key(skey))
        _write(self.server("servercert.pem"), _pem_cert(scert))
        _write(self.server("cacert.pem"), _pem_cert(ca1.cert))
        revoked = []
        for name, (cn, by_ca2, expired, is_revoked, has_cert) in self.CLIENTS.items():
            d = self.client(name)
            os.makedirs(d, exist_ok=True)
            # The client trusts CA 1 for the server; a CA-2 client also needs its own CA in
            # the file, or libvirt's client refuses its own certificate before connecting.
            cas = _pem_cert(ca1.cert) + (_pem_cert(ca2.cert) if by_ca2 else b"")
            _write(os.path.join(d, "cacert.pem"), cas)
            if not has_cert:
                continue
            key, cert = (ca2 if by_ca2 else ca1).issue(cn, expired=expired)
            _write(os.path.join(d, "clientkey.pem"), _pem_key(key))
            _write(os.path.join(d, "clientcert.pem"), _pem_cert(cert))
            if is_revoked:
                revoked.append(cert)
        crl = ca1.crl(revoked)
        _write(self.server("crl.pem"), crl.public_bytes(serialization.Encoding.PEM))

    def server(self, f):
        return os.path.join(self.root, "server", f)

    def client(self, name):
        return os.path.join(self.root, "clients", name)

    def daemon_config(self, allowed=(), readonly=()):
        """The daemon's TLS keys (TOML text)."""
        q = lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
        lines = [
            f"key_file = {q(self.server('serverkey.pem'))}",
            f"cert_file = {q(self.server('servercert.pem'))}",
            f"ca_file = {q(self.server('cacert.pem'))}",
            f"crl_file = {q(self.server('crl.pem'))}",
            "tls_allowed_dn_list = [" + ", ".join(q(p) for p in allowed) + "]",
            "tls_readonly_dn_list = [" + ", ".join(q(p) for p in readonly) + "]",
        ]
        return "\n".join(lines) + "\n"


class AgentPki:
    """Certificates for controller mode, under `root`: ca.pem (the agent link's CA),
    agent/{cert,key}.pem (the agent's, naming each of `agent_names`), controller/ (the
    controller's client certificate from that CA) and rogue/ (a client certificate from
    another CA, which an agent must refuse)."""

    def __init__(self, root, agent_names=("dpu-1",)):
        self.root = root
        os.makedirs(root, exist_ok=True)
        ca, rogue = CA("metalvirt agent CA"), CA("rogue CA")
        _write(self.path("ca.pem"), _pem_cert(ca.cert))
        for sub, issuer, cn, server in (("agent", ca, "agent", True),
                                        ("controller", ca, "controller", False),
                                        ("rogue", rogue, "controller", False)):
            os.makedirs(self.path(sub), exist_ok=True)
            key, cert = issuer.issue(cn, server=server, names=agent_names if server else ())
            _write(self.path(sub, "key.pem"), _pem_key(key))
            _write(self.path(sub, "cert.pem"), _pem_cert(cert))

    def path(self, *p):
        return os.path.join(self.root, *p)
