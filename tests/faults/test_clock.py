"""The wall clock jumps by hours (a wrong NTP step, a VM resumed, an admin's `date -s`) under
jlservice alone — libfaketime, preloaded into jlservice and not into JupyterLab, which runs as
another user and is not handed LD_PRELOAD; the machine's clock is left alone. Every timer runs on
the monotonic clock: nothing restarts, no backoff is lost, the watchdog misses no ping, a start's
duration is what it took; what is a date (the certificate's expiry) follows the wall clock."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from helpers.metrics import metrics_section, metrics_url, scrape, value
from helpers.procs import wait_for
from helpers.service import IS_ROOT, NotifySocket, Service

from jlservice.admin import tls

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
HOUR = 3600.0

pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="needs root to run JupyterLab as another user"),
    pytest.mark.skipif(LIBFAKETIME is None, reason="no libfaketime (Debian: faketime)"),
]


class FakeClock:
    """jlservice's wall clock, `offset` hours from the real one; read anew on every call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(0)

    def set(self, hours: int) -> None:
        self.path.write_text(f"{hours:+d}h\n")

    @property
    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            # A wall-clock step leaves CLOCK_MONOTONIC alone: so must the fake one.
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def _lab_user_service(service_factory, account, **sections) -> Service:
    svc = service_factory(lab={"user": account.name, "allow_root": False}, **sections)
    svc.notebooks.chmod(0o755)
    os.chown(svc.notebooks, account.uid, account.gid)
    return svc


def _events(svc: Service, name: str) -> list[dict]:
    return [e for e in svc.log_events() if e.get("event") == name]


def _reload_stamp(svc: Service) -> float:
    """SIGHUP, and the wall time jlservice gave that reload."""
    before = (svc.state().get("last_reload") or {}).get("at")
    svc.signal(signal.SIGHUP)
    return wait_for(
        lambda: (at := (svc.state().get("last_reload") or {}).get("at")) != before and at,
        30,
        "the reload",
    )


def _pings_keep_coming(sock: NotifySocket, count: int) -> None:
    """`count` WATCHDOG=1 in a row from now, each within the 1 s interval of WATCHDOG_USEC
    = 2 s."""
    since = time.time()
    sock.read_until(lambda _: len(sock.pings(since)) >= count, timeout=count * 2 + 10)
    gaps = [b - a for a, b in itertools.pairwise(sock.pings(since))]
    assert max(gaps) < 1.8, gaps


@pytest.mark.alone
def test_a_clock_jump_of_hours_restarts_nothing(service_factory, other_user, tmp_path):
    clock = FakeClock(tmp_path / "faketime")
    sock = NotifySocket(tmp_path / "notify.sock")
    svc = _lab_user_service(service_factory, other_user, metrics=metrics_section())
    # A certificate with 30 days and 3 hours left: no warning yet, one 5 hours later.
    cert, key = tls.self_signed(["127.0.0.1"], days=31, now=time.time() - 21 * HOUR)
    (svc.root / "tls.crt").write_bytes(cert)
    (svc.root / "tls.key").write_bytes(key)
    (svc.root / "tls.key").chmod(0o600)
    svc.sections["tls"] = {
        "certfile": str(svc.root / "tls.crt"),
        "keyfile": str(svc.root / "tls.key"),
    }
    svc.write_config()
    env = {**clock.env, "NOTIFY_SOCKET": sock.path, "WATCHDOG_USEC": "2000000"}
    try:
        svc.start(wait=False, env=env)
        # The jump comes while the first (cold) JupyterLab starts.
        wait_for(lambda: svc.state().get("status") == "starting", 60, "the first start")
        clock.set(5)
        first = svc.wait_ready()
        assert b"LD_PRELOAD" not in Path(f"/proc/{first['lab_pid']}/environ").read_bytes()
        assert abs(_reload_stamp(svc) - time.time() - 5 * HOUR) < 60  # jlservice is 5 h ahead
        ready_s = _events(svc, "lab_ready")[0]["ready_s"]
        assert 0 < ready_s < 60, ready_s  # what the start took, not the jump
        samples = scrape(metrics_url(svc))
        assert 0 < value(samples, "jlservice_ready_duration_seconds") < 60
        # The certificate's expiry is a date: 5 hours later it is under 30 days away.
        warned = _events(svc, "tls_certificate_expiring")
        assert warned and all("in 30 days;" in w["problem"] for w in warned), warned
        assert value(samples, "jlservice_tls_cert_expiry_timestamp_seconds") == tls.expiry(cert)

        lab, token = first["lab_pid"], svc.cli("token").stdout.strip()
        for hours in (-5, 7):  # 10 hours back, then 12 forward
            clock.set(hours)
            _pings_keep_coming(sock, 5)  # probes every second meanwhile ([health] interval 1)
            assert abs(_reload_stamp(svc) - time.time() - hours * HOUR) < 60
            # `jlservice reload` (the real clock) knows jlservice's answer (its clock).
            reloaded = svc.cli("reload")
            assert reloaded.returncode == 0, reloaded.stderr
            assert "nothing JupyterLab sees changed" in reloaded.stdout
        assert svc.state()["lab_pid"] == lab and svc.state()["restarts"] == 0
        assert not [e for e in svc.log_events() if e["event"].startswith(("lab_probe", "lab_un"))]
        assert svc.api("GET", "api/status", token=token).status_code == 200
    finally:
        sock.close()


@pytest.mark.alone
def test_a_clock_jump_back_loses_no_backoff(service_factory, other_user, tmp_path):
    clock = FakeClock(tmp_path / "faketime")
    sock = NotifySocket(tmp_path / "notify.sock")
    svc = _lab_user_service(service_factory, other_user)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", svc.port))
    holder.listen()
    try:
        svc.start(wait=False, env={**clock.env, "NOTIFY_SOCKET": sock.path})
        # It waits for the port: 0.5 s, then 1 s, 2 s … (the default [restart]).
        sock.read_until(lambda m: "trying again in 2 s" in m.get("STATUS", ""), timeout=60)
        clock.set(-5)  # in the middle of that 2 s wait
    finally:
        holder.close()
        sock.close()
    freed = time.monotonic()
    svc.wait_ready(timeout=60)
    # Within that wait's 2 s and a cold start, not 5 hours later.
    assert time.monotonic() - freed < 30
    assert abs(_reload_stamp(svc) - time.time() + 5 * HOUR) < 60  # it did go back 5 h
