"""A TLS context for a server a test plays, with a fresh self-signed certificate."""

import ssl
from pathlib import Path

from jlservice.admin import tls


def server_context(directory: Path, name: str = "lab.example.org") -> ssl.SSLContext:
    """Its certificate names only `name`: loopback clients must not check the name."""
    cert, key = tls.self_signed([name], 30)
    (directory / "c.pem").write_bytes(cert)
    (directory / "k.pem").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "c.pem", directory / "k.pem")
    return context
