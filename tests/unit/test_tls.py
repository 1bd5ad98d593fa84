"""tls: self-signed certificates, their facts, key pairing, expiry warning, name matching."""

from __future__ import annotations

import time

import pytest

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
