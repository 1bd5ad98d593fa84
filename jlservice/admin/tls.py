"""TLS certificates: make a self-signed one, read the facts jlservice needs from one.

Uses the cryptography library (imported with this module: keep it off the `token` path).
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jlservice.errors import CertError

WARN_BEFORE_S = 30 * 86400  # jlservice warns in its log from 30 days before expiry


class CertInfo(NamedTuple):
    subject: str
    names: tuple[str, ...]  # DNS names and IP addresses of subjectAltName
    not_before: float
    not_after: float  # seconds since the epoch


_SIGNATURE_ONLY = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def self_signed(names: list[str], days: int, now: float | None = None) -> tuple[bytes, bytes]:
    """A self-signed certificate for `names` (host names or IP addresses), valid for `days`
    from `now`, and its private key (P-256): both as PEM.

    A leaf, never a CA: its key is handed to JupyterLab, where notebook code can read it, so
    a browser or system that trusts this certificate must not trust certificates that key
    signs. keyUsage is digitalSignature alone: keyEncipherment is RSA key transport, which
    RFC 5480 does not allow for an EC key (TLS uses ECDHE with an ECDSA signature).
    """
    if not names:
        raise ValueError("a certificate needs at least one name")
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.datetime.fromtimestamp(
        time.time() if now is None else now, datetime.timezone.utc
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little slack for clocks that are slightly behind.
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SIGNATURE_ONLY, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        # Key identifiers: strict verifiers (OpenSSL's X509_STRICT) expect them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def inspect(cert_pem: bytes) -> CertInfo:
    """What a PEM certificate says about itself; CertError if it is not one."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertError(f"not a PEM certificate ({exc})") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName)) + tuple(
            str(ip) for ip in san.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        names = ()
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        names=names,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def expiry(cert_pem: bytes) -> float:
    """When the certificate expires, in seconds since the epoch (the metrics export it as
    jlservice_tls_cert_expiry_timestamp_seconds)."""
    return inspect(cert_pem).not_after


def check_pair(cert_pem: bytes, key_pem: bytes) -> str | None:
    """Why `key_pem` cannot serve `cert_pem` (not a key, encrypted, another key), or None."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return "the key is encrypted with a passphrase; JupyterLab cannot ask for it"
    except ValueError:
        return "not a PEM private key"
    cert_key = x509.load_pem_x509_certificate(cert_pem).public_key()
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, raw) != cert_key.public_bytes(
        serialization.Encoding.PEM, raw
    ):
        return "the key does not belong to the certificate"
    return None


def expiry_warning(cert_pem: bytes, now: float | None = None) -> str | None:
    """The log warning owed from 30 days before expiry (and after it), else None."""
    left = expiry(cert_pem) - (time.time() if now is None else now)
    if left > WARN_BEFORE_S:
        return None
    when = datetime.datetime.fromtimestamp(expiry(cert_pem), datetime.timezone.utc)
    stamp = when.strftime("%Y-%m-%d %H:%M UTC")
    if left <= 0:
        return f"the TLS certificate expired on {stamp}; renew it (`jlservice cert`)"
    return f"the TLS certificate expires on {stamp}, in {left / 86400:.0f} days; renew it"


def matches(names: tuple[str, ...], host: str) -> bool:
    """Whether a certificate with subjectAltName `names` is valid for `host` (one-label
    wildcards as browsers accept them)."""
    host = host.strip("[]").lower().rstrip(".")
    for name in (n.lower().rstrip(".") for n in names):
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False
