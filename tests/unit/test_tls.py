"""tls: self-signed certificates, their facts, key pairing, expiry warning, name matching."""

from __future__ import annotations

import datetime
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jlservice.admin import tls


def test_self_signed_has_the_names_and_validity_asked_for() -> None:
    now = 1_800_000_000.0
    cert, key = tls.self_signed(["jupyter.example.test", "127.0.0.1", "::1"], 90, now=now)
    info = tls.inspect(cert)
    assert info.names == ("jupyter.example.test", "127.0.0.1", "::1")
    assert info.not_after == now + 90 * 86400
    assert info.not_before < now
    assert tls.expiry(cert) == info.not_after
    assert tls.check_pair(cert, key) is None
    assert b"PRIVATE KEY" in key and b"ENCRYPTED" not in key


def test_self_signed_is_a_leaf_for_servers() -> None:
    cert = x509.load_pem_x509_certificate(tls.self_signed(["a.test"], 1)[0])
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(extended) == [ExtendedKeyUsageOID.SERVER_AUTH]


def _signed_by(cert_pem: bytes, key_pem: bytes, name: str) -> tuple[bytes, bytes]:
    """A certificate for `name` (and its key) that notebook code holding `key_pem` could
    mint: issued in the name of `cert_pem`'s subject, signed with its key."""
    issuer = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    own = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(own.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    own_pem = own.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), own_pem


def _handshake(trusted: Path, served: tuple[Path, Path], name: str) -> None:
    """A TLS handshake in memory: a client that trusts only `trusted` (as someone who added
    it to their trust store) asks for `name`; the server presents `served`."""
    client = ssl.create_default_context(cafile=str(trusted))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*served)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {c: False, s: False}
    while not all(done.values()):
        for end in (c, s):
            if not done[end]:
                try:
                    end.do_handshake()
                    done[end] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())


def test_trusting_the_certificate_does_not_trust_what_its_key_signs(tmp_path: Path) -> None:
    """The key is JupyterLab's, readable by notebook code: someone who trusts the certificate
    (to silence the browser's warning) must not thereby trust a certificate it signs."""
    cert_pem, key_pem = tls.self_signed(["jupyter.example.test", "127.0.0.1"], 30)
    forged_pem, forged_key_pem = _signed_by(cert_pem, key_pem, "bank.example.test")
    pems = {"cert": cert_pem, "key": key_pem, "forged": forged_pem, "forged_key": forged_key_pem}
    files = {name: tmp_path / f"{name}.pem" for name in pems}
    for name, pem in pems.items():
        files[name].write_bytes(pem)
    # The certificate itself is trusted, for its own names…
    _handshake(files["cert"], (files["cert"], files["key"]), "jupyter.example.test")
    # …a certificate its key signed for another site is not.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(files["cert"], (files["forged"], files["forged_key"]), "bank.example.test")


def test_a_key_from_another_pair_or_not_a_key_is_named() -> None:
    cert, _ = tls.self_signed(["a.test"], 1)
    _, other_key = tls.self_signed(["a.test"], 1)
    assert tls.check_pair(cert, other_key) == "the key does not belong to the certificate"
    assert tls.check_pair(cert, b"hello") == "not a PEM private key"
    with pytest.raises(tls.CertError, match="not a PEM certificate"):
        tls.inspect(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_expiry_warning_starts_30_days_before() -> None:
    now = time.time()
    cert, _ = tls.self_signed(["a.test"], 60, now=now)
    assert tls.expiry_warning(cert, now=now) is None
    assert tls.expiry_warning(cert, now=now + 29 * 86400) is None
    soon = tls.expiry_warning(cert, now=now + 31 * 86400)
    assert soon is not None and "in 29 days" in soon
    expired = tls.expiry_warning(cert, now=now + 61 * 86400)
    assert expired is not None and "expired on" in expired


@pytest.mark.parametrize(
    ("names", "host", "ok"),
    [
        (("jupyter.example.org",), "jupyter.example.org", True),
        (("JUPYTER.example.org",), "jupyter.example.org.", True),
        (("*.example.org",), "jupyter.example.org", True),
        (("*.example.org",), "a.b.example.org", False),
        (("*.example.org",), "example.org", False),
        (("127.0.0.1",), "127.0.0.1", True),
        (("::1",), "[::1]", True),
        (("other.org",), "jupyter.example.org", False),
    ],
)
def test_matches(names, host, ok) -> None:
    assert tls.matches(names, host) is ok
