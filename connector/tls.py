"""The agent's certificate: fetched, fingerprinted, and turned into the one
root the gRPC channel trusts.

The agent's certificate is self-signed, so no CA can vouch for it; what the
connector trusts is its SHA-256, pinned on first use as ssh's known_hosts
does. The certificate is fetched with a handshake that verifies nothing,
checked against the pin, and then given to gRPC as the *only* trusted root:
the real handshake therefore succeeds only with that exact certificate, and a
certificate swapped in between the two handshakes is refused by TLS itself.
"""

import asyncio
import hashlib
import ssl

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from connector.address import parse_address
from connector.errors import LinkError


async def fetch_certificate(address: str, timeout: float) -> bytes:
    """The DER certificate the TLS server at HOST:PORT presents."""
    target = parse_address(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the pin is checked by the caller
    context.set_alpn_protocols(["h2"])  # what a gRPC server expects to hear
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(target.host, target.port, ssl=context)
    except TimeoutError:
        raise LinkError(f"{address} did not complete a TLS handshake in {timeout:g} s") from None
    except ssl.SSLError as exc:
        raise LinkError(
            f"TLS handshake with {address} failed ({exc.reason}); "
            "if the agent runs with --insecure-loopback, add the run with --insecure-loopback too"
        ) from None
    except OSError as exc:
        raise LinkError(f"cannot reach {address}: {exc.strerror or exc}") from None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.transport.abort()
    if not der:
        raise LinkError(f"{address} presented no certificate")
    return bytes(der)


def fingerprint(der: bytes) -> str:
    """SHA-256 of the DER certificate, lowercase hex: what the agent prints."""
    return hashlib.sha256(der).hexdigest()


def verified_name(der: bytes) -> str:
    """The name TLS will check the certificate against: its first DNS SAN,
    else its common name (the agent's is "tether-agent" in both)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if names:
        return names[0]
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common:
        raise LinkError("the agent's certificate names no host (no DNS SAN, no CN)")
    return str(common[0].value)


def pinned_credentials(der: bytes) -> grpc.ChannelCredentials:
    """Credentials that trust exactly this certificate and nothing else."""
    return grpc.ssl_channel_credentials(root_certificates=ssl.DER_cert_to_PEM_cert(der).encode())
