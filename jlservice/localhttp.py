"""How root speaks HTTP to this machine's own servers (JupyterLab, jlservice's exporter).

JupyterLab runs as the lab user, who may make it answer anything: so never through an
http_proxy from the environment, over TLS without checking JupyterLab's certificate (it is
our own child, reached on loopback, and its names need not include the address used here),
and never following a redirect: urllib would follow one anywhere, with the token, after
reading the whole body first. A redirect is an HTTPError of its 3xx status instead.
"""

from __future__ import annotations

import ssl
import urllib.request


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def _loopback_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}),
    urllib.request.HTTPSHandler(context=_loopback_tls()),
    _NoRedirect(),
)
