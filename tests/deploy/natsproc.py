"""A nats-server started from a configuration file that `deploy.nats_auth` wrote, and a
self-signed CA for TLS tests (made with `cryptography`)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ash.embedded_nats import find_nats_server


@dataclass
class ConfNats:
    """`nats-server -c CONF`; its port comes from the ports file (the config listens on :-1)."""

    conf: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self, timeout: float = 20.0) -> ConfNats:
        ports = Path(tempfile.mkdtemp(prefix="ash-nats-ports-"))
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [find_nats_server(), "-c", str(self.conf), "--ports_file_dir", str(ports)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"nats-server exited:\n{self.log.read_text()}")
            files = list(ports.glob(f"*_{self.popen.pid}.ports"))
            if files and "Server is ready" in self.log.read_text(errors="replace"):
                try:
                    self.url = json.loads(files[0].read_text())["nats"][0]
                    return self
                except (ValueError, KeyError, IndexError):
                    pass  # written but not complete yet
            time.sleep(0.02)  # poll interval of the readiness check above
        raise TimeoutError(f"nats-server not ready:\n{self.log.read_text()}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def violations(self) -> list[str]:
        """The permission violations the server logged."""
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if "Violation" in line]

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def make_ca(out: Path, *, client: bool = False) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost signed by it (and, with
    `client`, a client certificate too). Returns the PEM paths by name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("ash test CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": out / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[cn] = out / f"{cn}.pem"
        paths[cn].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{cn}-key"] = write_key(key, out / f"{cn}-key.pem")

    leaf("server", ExtendedKeyUsageOID.SERVER_AUTH,
         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    if client:
        leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return paths
