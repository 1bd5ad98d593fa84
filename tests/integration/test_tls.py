"""https: `jlservice cert` → JupyterLab serves https with that certificate."""

from __future__ import annotations

import os
import ssl
import stat

import pytest
import requests
from cryptography import x509
from helpers.metrics import metrics_section, metrics_url, value, wait_scrape
from helpers.procs import pid_alive
from helpers.service import IS_ROOT, render_toml

from jlservice.admin import tls


def test_cert_then_https_with_the_names_asked_for(service):
    service.use_certificate("jupyter.example.test", "10.1.2.3")
    cert_file, key_file = service.state_dir / "tls.crt", service.state_dir / "tls.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    config_text = service.config_path.read_text()
    assert f'certfile = "{cert_file}"' in config_text
    assert f'keyfile = "{key_file}"' in config_text

    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "jupyter.example.test" in san.get_values_for_type(x509.DNSName)
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"10.1.2.3", "127.0.0.1"} <= ips
    # A leaf: its key goes to JupyterLab, where notebooks can read it (tests/unit/test_tls.py
    # shows that what that key signs is not trusted).
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    metrics = metrics_section(gpu=False)
    service.sections["metrics"] = metrics
    service.write_config(config_text + render_toml({"metrics": metrics}))

    service.start()
    # The expiry jlservice exports is the certificate's own.
    exported = wait_scrape(
        metrics_url(service),
        lambda s: value(s, "jlservice_tls_cert_expiry_timestamp_seconds") is not None,
        "the certificate's expiry",
    )
    expires = cert.not_valid_after_utc.timestamp()
    assert value(exported, "jlservice_tls_cert_expiry_timestamp_seconds") == expires
    # A client that trusts only this certificate (and checks the name 127.0.0.1).
    assert service.api("GET", "api").status_code == 200
    url = service.cli("token", "--url").stdout.strip()
    assert url.startswith(f"https://127.0.0.1:{service.port}/lab?token=")
    assert requests.get(url, verify=str(cert_file), timeout=30).status_code == 200
    # Plain http on the same port is not served.
    plain = service.base.replace("https://", "http://") + "api"
    try:
        answered = requests.get(plain, timeout=10).status_code == 200
    except requests.ConnectionError:
        answered = False
    assert not answered
    # What the server presents is the certificate jlservice made.
    served = ssl.get_server_certificate(("127.0.0.1", service.port))
    assert x509.load_pem_x509_certificate(served.encode()) == cert


def test_certificate_near_expiry_is_warned_about(service):
    service.use_certificate(days=10)
    service.start()
    warnings = [e for e in service.log_events() if e.get("event") == "tls_certificate_expiring"]
    assert warnings and "in 10 days" in warnings[0]["problem"], warnings


def test_missing_key_file_is_a_config_error(service):
    service.use_certificate()
    (service.state_dir / "tls.key").unlink()
    result = service.cli("run")
    assert result.returncode == 78
    assert result.stderr.strip().endswith(
        f"[tls] keyfile: {service.state_dir / 'tls.key'} does not exist; "
        "create it with `jlservice cert`"
    )


def test_renewed_certificate_restarts_jupyterlab(service):
    service.use_certificate()
    service.start()
    before = service.lab_pid
    result = service.cli("cert", "--hostname", "renewed.example.test")
    assert result.returncode == 0, result.stderr
    assert "JupyterLab restarted" in result.stdout
    # The command returned once the new server answered.
    state = service.state()
    assert state["status"] == "ready" and state["lab_pid"] not in (None, before)
    assert pid_alive(state["lab_pid"]) and not pid_alive(before)
    assert service.api("GET", "api").status_code == 200
    served = ssl.get_server_certificate(("127.0.0.1", service.port))
    names = tls.inspect(served.encode()).names
    assert "renewed.example.test" in names


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run `jlservice cert` as another user")
def test_cert_prints_the_lines_when_it_cannot_edit_the_config(service, other_user):
    service.state_dir.mkdir()
    os.chown(service.state_dir, other_user.uid, other_user.gid)
    before = service.config_path.read_text()
    result = service.cli("cert", user=other_user.name)
    assert result.returncode == 0, result.stderr
    assert f"cannot write {service.config_path} (Permission denied)" in result.stdout
    assert (
        "add these lines to your configuration file:\n[tls]\n"
        f'certfile = "{service.state_dir / "tls.crt"}"\n'
        f'keyfile = "{service.state_dir / "tls.key"}"\n'
    ) in result.stdout
    assert service.config_path.read_text() == before
