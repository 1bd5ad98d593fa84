"""`jlservice nginx`: print an nginx server block for the configured JupyterLab."""

from __future__ import annotations

import argparse
import re
import sys

from jlservice import EX_CONFIG, config, net
from jlservice.cli._client import config_path
from jlservice.errors import CommandError


def register(sub, common: argparse.ArgumentParser) -> None:
    nginx = sub.add_parser(
        "nginx",
        parents=[common],
        help="print an nginx reverse-proxy configuration for JupyterLab",
        description="Print an nginx server block that proxies to the configured JupyterLab: "
        "its address and base_url, websocket upgrade for kernels, terminals and events, "
        "long read timeouts, forwarded headers, and optionally TLS with an http→https "
        "redirect.",
    )
    nginx.add_argument("--server-name", default="_", metavar="NAME", help="nginx server_name")
    nginx.add_argument("--tls-cert", metavar="FILE", help="certificate for nginx to serve")
    nginx.add_argument("--tls-key", metavar="FILE", help="its private key")
    nginx.add_argument(
        "--listen",
        metavar="ADDR",
        help="nginx `listen` value, e.g. 443 or 127.0.0.1:8080 (default: 80, or 443 with TLS)",
    )
    nginx.add_argument(
        "--redirect-listen",
        metavar="ADDR",
        help="with TLS: where plain http is redirected to https (default: 80)",
    )
    nginx.set_defaults(func=cmd_nginx)


def cmd_nginx(args: argparse.Namespace) -> int:
    from jlservice.admin import nginx_conf

    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandError("give both --tls-cert and --tls-key, or neither")
    cfg = config.load(config_path(args))
    lab = cfg.lab
    if not cfg.auth.login_required:
        raise CommandError(
            "JupyterLab has no login ([auth] token = false and no password_file): a proxy "
            f"would let anyone who reaches it run code as {lab.user}; set a password "
            "(`jlservice password`), or [auth] token = true",
            EX_CONFIG,
        )
    if not re.fullmatch(r"[A-Za-z0-9._~/-]+", lab.base_url):
        raise CommandError(
            f"[lab] base_url {lab.base_url!r} has characters nginx would misread; "
            "write the location by hand"
        )
    scheme = "https" if cfg.tls.enabled else "http"
    site = nginx_conf.Site(
        upstream=net.local_url(lab.ip, lab.port, "", scheme),
        base_url=lab.base_url,
        server_name=args.server_name,
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        redirect_listen=args.redirect_listen,
    )
    print(nginx_conf.render(site), end="")
    if lab.public_url is None:
        print(
            "jlservice nginx: set [lab] public_url to the address people will type: only "
            "then does JupyterLab accept requests for a host name other than this machine's",
            file=sys.stderr,
        )
    return 0
