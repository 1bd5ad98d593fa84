"""Ask JupyterLab whether it serves: unauthenticated GET {base_url}api answers 200.

tornado is imported on the first probe, not with this module: by then JupyterLab has been
spawned, and the import overlaps its start-up instead of delaying it.
"""

from __future__ import annotations

from jlservice import bounded

MAX_BODY = 8 << 20  # api/kernels of thousands of kernels; whatever answers is not trusted


async def _get(url: str, timeout: float, token: str | None = None):
    """GET `url` without raising on HTTP errors (tornado imported on first use)."""
    from tornado.httpclient import AsyncHTTPClient

    headers = {"Authorization": f"token {token}"} if token else None
    # Over https the certificate is not verified: this is our own child on a loopback
    # address, and a certificate made for the public name need not name 127.0.0.1.
    # The loop's one client is made here, on the first probe: its size limit holds for all.
    return await AsyncHTTPClient(max_body_size=MAX_BODY).fetch(
        url,
        headers=headers,
        request_timeout=timeout,
        connect_timeout=timeout,
        validate_cert=False,
        follow_redirects=False,
        raise_error=False,
    )


async def api_problem(url: str, timeout: float) -> str | None:
    """None if GET `url` answers 200 within `timeout` seconds, else what went wrong."""
    from tornado.httpclient import HTTPClientError

    try:
        response = await _get(url, timeout)
    except HTTPClientError as exc:  # timeouts arrive here as code 599
        return f"{url}: {exc.message}"
    except OSError as exc:
        return f"{url}: {exc.strerror or exc}"
    if response.code == 200:
        return None
    if response.code == 599:
        return f"{url}: {response.error}"
    return f"{url} answered HTTP {response.code}"


async def busy_kernels(url: str, token: str, timeout: float) -> int | None:
    """How many kernels are executing code right now (GET api/kernels), or None if unknown:
    no answer, or one that is not a list of kernels (the lab user can make it say anything)."""
    from tornado.httpclient import HTTPClientError

    try:
        response = await _get(url, timeout, token)
    except (HTTPClientError, OSError):
        return None
    if response.code != 200:
        return None
    try:
        kernels = bounded.objects(bounded.loads(response.body, MAX_BODY))
    except bounded.Malformed:
        return None
    return sum(1 for k in kernels if k.get("execution_state") == "busy")
