"""`jlservice cert [--hostname NAME …] [--days N]`: a self-signed certificate for https."""

from __future__ import annotations

import argparse
import time

from jlservice import config, files
from jlservice.cli._client import config_path, reload_if_running
from jlservice.cli.common import point_config_at
from jlservice.config.reader import read_toml
from jlservice.errors import CommandError

CERT_NAME, KEY_NAME = "tls.crt", "tls.key"  # in the state dir


def register(sub, common: argparse.ArgumentParser) -> None:
    cert = sub.add_parser(
        "cert",
        parents=[common],
        help="make a self-signed TLS certificate and serve https with it",
        description="Write a self-signed certificate (subjectAltName: the names given, this "
        "machine's name and 127.0.0.1) and its 0600 key into the state dir, point [tls] at "
        "them (or print the lines to add) and apply it if jlservice runs.",
    )
    cert.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="NAME",
        help="a name or address browsers will use (repeat for several)",
    )
    cert.add_argument("--days", type=int, default=365, help="validity (default: 365)")
    cert.set_defaults(func=cmd_cert)


def cmd_cert(args: argparse.Namespace) -> int:
    import socket

    from jlservice.admin import tls  # cryptography: only here

    if not 1 <= args.days <= 3650:
        raise CommandError(f"--days {args.days}: choose 1 to 3650 days")
    names = list(dict.fromkeys([*args.hostname, socket.gethostname(), "127.0.0.1"]))
    cert_pem, key_pem = tls.self_signed(names, args.days)
    path = config_path(args)
    state_dir = config.load_service(path).state_dir
    files.ensure_dir(state_dir, 0o700)  # the key goes in: nobody else's, writable by none
    cert_file, key_file = state_dir / CERT_NAME, state_dir / KEY_NAME
    files.write_atomic(key_file, key_pem, mode=0o600)
    files.write_atomic(cert_file, cert_pem, mode=0o644)
    until = time.strftime("%Y-%m-%d", time.gmtime(tls.expiry(cert_pem)))
    print(f"certificate for {', '.join(names)}, valid until {until}: {cert_file}")
    print(f"its private key (0600): {key_file}")
    doc = read_toml(str(path)) if path is not None else {}
    section = doc.get("tls", {}) if isinstance(doc.get("tls"), dict) else {}
    current = {k: section[k] for k in ("certfile", "keyfile") if k in section}
    point_config_at(path, "tls", {"certfile": str(cert_file), "keyfile": str(key_file)}, current)
    return reload_if_running(args)
