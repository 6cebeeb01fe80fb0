"""The agent's own TLS certificate, made once and reused, and its fingerprint.

The connector pins the SHA-256 of the certificate (trust on first use, as
ssh's known_hosts does), so a self-signed certificate is all that is needed.
"""

import base64
import datetime
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.errors import FailedPrecondition

CERT_NAME = "tether-agent"


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    cert_pem: bytes
    key_pem: bytes

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER, read straight from the PEM."""
        body = self.cert_pem.split(b"-----BEGIN CERTIFICATE-----", 1)[1]
        body = body.split(b"-----END CERTIFICATE-----", 1)[0]
        return hashlib.sha256(base64.b64decode(b"".join(body.split()))).hexdigest()


def _make_self_signed() -> TlsIdentity:
    # Imported here: only the first start makes a certificate, and the
    # library is a tenth of an idle agent's memory.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CERT_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return TlsIdentity(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def load_or_create(state_dir: Path) -> TlsIdentity:
    """The identity under `state_dir`, made on first start."""
    cert_path, key_path = state_dir / "agent.crt", state_dir / "agent.key"
    if cert_path.exists() and key_path.exists():
        return TlsIdentity(cert_path.read_bytes(), key_path.read_bytes())
    identity = _make_self_signed()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(identity.key_pem)
    cert_path.write_bytes(identity.cert_pem)
    return identity


async def load_or_create_apart(state_dir: Path) -> TlsIdentity:
    """load_or_create, with a first certificate made by a short-lived child:
    the crypto library it needs would otherwise stay in the agent's memory
    for the whole run (about a fifth of an idle agent)."""
    if not ((state_dir / "agent.crt").exists() and (state_dir / "agent.key").exists()):
        from agent import processes

        made = await processes.run([sys.executable, "-m", "agent.tls", str(state_dir)], timeout=60)
        if made.returncode != 0:
            raise FailedPrecondition(
                f"could not make the agent's certificate in {state_dir}: "
                + made.stderr.decode(errors="replace").strip()[-500:]
            )
    return load_or_create(state_dir)


def load_given(cert_path: Path, key_path: Path) -> TlsIdentity:
    return TlsIdentity(cert_path.read_bytes(), key_path.read_bytes())


if __name__ == "__main__":
    load_or_create(Path(sys.argv[1]))
