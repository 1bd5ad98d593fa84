"""Checks that talk to the running JupyterLab (and the metrics endpoint) over HTTP."""

from __future__ import annotations

import http.client
import ipaddress
import urllib.error

from jlservice import localhttp, net, users
from jlservice.admin.doctor.context import (
    NEEDS_CONFIG,
    NEEDS_LAB,
    PORT_TAKEN_FIX,
    Context,
    Result,
    lab_stranger,
    not_checked,
)
from jlservice.admin.doctor.local import listeners
from jlservice.cli.common import mask
from jlservice.config.access import few
from jlservice.config.model import LabConfig

TIMEOUT = 3.0


def get(
    url: str,
    token: str | None = None,
    scheme: str = "token",
    stranger: localhttp.Stranger | None = None,
) -> tuple[int | None, str]:
    """(HTTP status, '') or (None, why there was no answer). A `token` needs `stranger`
    (localhttp.Request); NotSent when it named someone once connected."""
    request = localhttp.Request(url, stranger)
    if token:
        request.add_header("Authorization", f"{scheme} {token}")
    try:
        with localhttp.OPENER.open(request, timeout=TIMEOUT) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except http.client.HTTPException as exc:  # what answers there speaks no HTTP
        return None, f"not an HTTP answer ({type(exc).__name__})"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, localhttp.NotSent):
            raise reason from None
        return None, str(reason)


def _url(ctx: Context, path: str) -> str:
    s = ctx.state
    return net.local_url(s.ip, s.port, f"{s.base_url}{path}", s.scheme)


def check_answers(ctx: Context) -> Result:
    if not ctx.lab_serving:
        return not_checked("answers", NEEDS_LAB)
    url = _url(ctx, "api")
    code, why = get(url)
    if code == 200:
        return Result("answers", True, f"GET {url} → 200")
    return Result(
        "answers",
        False,
        f"GET {url} → {code or why}",
        "see jlservice's log; `jlservice status` for the last error",
    )


def check_token(ctx: Context) -> Result:
    if not ctx.lab_serving:
        return not_checked("token", NEEDS_LAB)
    s = ctx.state
    if not s.token_login:
        return Result("token", None, "token login is off ([auth] token = false)")
    try:
        code, why = get(_url(ctx, "api/status"), s.token, stranger=lambda: lab_stranger(s))
    except localhttp.NotSent as exc:  # the port changed hands since the doctor started
        return Result("token", False, f"{exc.who}: the token is not sent there", PORT_TAKEN_FIX)
    if code == 200:
        return Result("token", True, f"the token in the state file ({mask(s.token)}) logs in")
    return Result(
        "token",
        False,
        f"the token in the state file ({mask(s.token)}) is refused: {code or why}",
        "check the lab user's jupyter_server_config for IdentityProvider.token; "
        "`jlservice token --rotate`",
    )


def check_auth(ctx: Context) -> Result:
    """Login is required wherever someone other than the lab user can reach JupyterLab.

    No login on loopback is a ✗ (and doctor's exit status 1), not a passing warning, where
    other people have accounts here: each of them could run code as the lab user."""
    name = "auth"
    if ctx.config is None:
        return not_checked(name, NEEDS_CONFIG)
    lab, auth = ctx.config.lab, ctx.config.auth
    loopback = ipaddress.ip_address(lab.ip).is_loopback
    methods = [m for m, on in (("token", auth.token), ("password", auth.password_hash)) if on]
    configured = " and ".join(methods) or "no login"
    others = users.people(ctx.config.account.uid)
    if auth.login_required:
        fix = "remove the token/password override from the lab user's jupyter config"
    else:
        fix = "set a password (`jlservice password`), or [auth] token = true"
    if not ctx.lab_serving:
        if not auth.login_required and others:
            return Result(name, False, _open_to(lab, others, "would serve"), fix)
        return Result(name, True, f"{configured} on {lab.ip} (server not checked: not serving)")
    code, why = get(_url(ctx, "api/contents"))
    if code == 200 and not loopback:
        return Result(
            name,
            False,
            f"JupyterLab on {lab.ip}:{lab.port} serves files without any login: anyone who "
            f"reaches it can run code as {lab.user}",
            fix + ', or listen on ip = "127.0.0.1"',
        )
    if code == 200 and others:
        return Result(name, False, _open_to(lab, others, "serves"), fix)
    if code == 200:
        return Result(name, True, f"no login on {lab.ip}: no one else has an account here")
    if code in (401, 403):
        return Result(name, True, f"{configured} required; anonymous requests get {code}")
    return Result(name, False, f"GET api/contents without login → {code or why}", "see the log")


def _open_to(lab: LabConfig, others: list[str], serves: str) -> str:
    return (
        f"JupyterLab on {lab.ip}:{lab.port} {serves} files without any login to every "
        f"local account ({few(others)}): each can run code as {lab.user}"
    )


def check_metrics(ctx: Context) -> Result:
    """The Prometheus exporter answers GET /metrics where [metrics] listen says; with a
    bearer token, only to a scrape that sends it, and the token goes to jlservice alone."""
    name = "metrics"
    if ctx.config is None:
        return not_checked(name, NEEDS_CONFIG)
    metrics = ctx.config.metrics
    if not metrics.enabled:
        return Result(name, None, "metrics are off ([metrics] enabled = false)")
    if not ctx.running:
        return not_checked(name, "jlservice is not running (see above)")
    url = f"http://{metrics.listen}/metrics"
    fix = "check [metrics] listen and the log"
    if not metrics.bearer_token:
        code, why = get(url)
        if code == 200:
            return Result(
                name, True, f"GET {url} → 200 (no bearer_token_file: open to every local account)"
            )
        return Result(name, False, f"GET {url} → {code or why}", fix)
    supervisor = ctx.state.supervisor_pid

    def stranger() -> str | None:
        if _held_by_supervisor(ctx, *metrics.address):
            return None
        return f"{metrics.listen} is not held by jlservice (pid {supervisor})"

    try:
        code, why = get(url, metrics.bearer_token, "Bearer", stranger)
    except localhttp.NotSent as exc:
        return Result(
            name,
            False,
            f"{exc.who}: the bearer token was not sent",
            "see the log for metrics_listen_failed; free the port or change [metrics] listen",
        )
    if code == 401:
        fix = "`jlservice reload`: jlservice reads bearer_token_file at start and reload only"
    if code != 200:
        return Result(name, False, f"GET {url} with the bearer token → {code or why}", fix)
    anonymous, _ = get(url)
    if anonymous != 401:
        return Result(
            name,
            False,
            f"GET {url} without the bearer token → {anonymous}, not 401",
            "`jlservice reload` to apply [metrics] bearer_token_file",
        )
    return Result(name, True, f"GET {url} → 200 with the bearer token, 401 without")


def _held_by_supervisor(ctx: Context, ip: str, port: int) -> bool:
    return ip in listeners(port).get(ctx.state.supervisor_pid, [])
