"""[metrics]: the Prometheus exporter's switch, address, GPU sampling and its interval, the
notebook labels, and the bearer token a scrape must send.

The token file is read here, at validation (start-up and every reload), by root: it must be
a regular file of root or of the account jlservice runs as, writable by its owner alone and
readable by nobody the lab user is: others never, its group only when the lab user is not in
that group (root:prometheus 0640 lets a Prometheus on this machine read it).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jlservice import net, users
from jlservice.config.model import LabConfig, MetricsConfig
from jlservice.config.reader import Reader

_TOKEN_MIN, _TOKEN_MAX = 16, 4096
_MAKE_TOKEN = "(umask 077; openssl rand -hex 32 > {path})"


def parse_metrics(r: Reader, t: Mapping[str, Any], lab: LabConfig, base: Path) -> MetricsConfig:
    d = MetricsConfig()
    r.only(t, "metrics", set(d.__dataclass_fields__) - {"bearer_token"})
    listen = r.get(t, "metrics", "listen", str, d.listen)
    ip, port = _split_listen(r, listen)
    same_host = ip == lab.ip or net.is_wildcard(ip) or net.is_wildcard(lab.ip)
    if port == lab.port and same_host:
        r.fail("metrics", "listen", f"port {port} is JupyterLab's ([lab] port); choose another")
    token_file = r.get(t, "metrics", "bearer_token_file", str, None)
    if token_file == "":
        r.fail("metrics", "bearer_token_file", "is empty: name the token file, or leave it out")
    token_path = base / token_file if token_file else None  # an absolute path stays as it is
    return MetricsConfig(
        enabled=r.get(t, "metrics", "enabled", bool, d.enabled),
        listen=f"{net.bracket(ip)}:{port}",
        gpu=r.get(t, "metrics", "gpu", bool, d.gpu),
        interval=r.seconds(t, "metrics", "interval", d.interval, minimum=0.5),
        notebook_labels=r.get(t, "metrics", "notebook_labels", bool, d.notebook_labels),
        bearer_token_file=token_path,
        bearer_token=_read_token(r, token_path, lab) if token_path else "",
    )


def _split_listen(r: Reader, listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    usage = "expected IP:PORT, e.g. 127.0.0.1:9877 or [::1]:9877"
    if not sep or not port_text.isdigit():
        r.fail("metrics", "listen", f"{listen!r}: {usage}")
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        r.fail("metrics", "listen", f"{host!r} is not an IP address; {usage}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        r.fail("metrics", "listen", f"{port} is not a port (1–65535)")
    return ip, port


def _read_token(r: Reader, path: Path, lab: LabConfig) -> str:
    """The token in `path`, without surrounding whitespace (as Prometheus reads its
    credentials_file). Never part of an error message."""
    key = "bearer_token_file"
    try:  # O_NONBLOCK: a FIFO put in its place must not hang root
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        r.fail("metrics", key, f"{path} does not exist; create it: {_MAKE_TOKEN.format(path=path)}")
    except OSError as exc:
        r.fail("metrics", key, f"{path}: cannot read: {exc.strerror} (jlservice reads it as root)")
    try:  # checked before fdopen, which refuses a directory with IsADirectoryError
        problem = _exposed(os.fstat(fd), path, lab)
        if problem:
            r.fail("metrics", key, problem)
        raw = os.read(fd, _TOKEN_MAX + 1)
    finally:
        os.close(fd)
    token = raw.strip(b" \t\r\n")
    if not _TOKEN_MIN <= len(token) <= _TOKEN_MAX or not all(33 <= c <= 126 for c in token):
        r.fail(
            "metrics",
            key,
            f"{path} must hold one token of {_TOKEN_MIN}–{_TOKEN_MAX} printable characters "
            f"without spaces: {_MAKE_TOKEN.format(path=path)}",
        )
    return token.decode("ascii")


def _exposed(st: os.stat_result, path: Path, lab: LabConfig) -> str | None:
    """Why the file is no secret from the lab user (or from others), or None."""
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid not in (0, os.geteuid()):
        return f"{path} belongs to uid {st.st_uid}, who could change it: `chown root {path}`"
    if mode & 0o022:
        return f"{path} is mode {mode:04o}, writable by others: `chmod 600 {path}`"
    if mode & 0o004:
        return f"{path} is mode {mode:04o}, readable by every user: `chmod 600 {path}`"
    account = users.lookup(lab.user)
    if mode & 0o040 and account is not None and st.st_gid in account.groups:
        return (
            f"{path} is readable by its group (gid {st.st_gid}), which {lab.user} is in: "
            f"`chmod 600 {path}`, or give it the group of your Prometheus alone"
        )
    return None
