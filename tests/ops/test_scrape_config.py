"""etc/prometheus/scrape.yml is a valid Prometheus configuration, as shipped and installed
beside the files it names (the rules, the bearer token, the example targets file), also
with its TLS lines switched on. That its job scrapes a real jlservice with the token, and
labels it, is tests/ops/test_live_prometheus.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from helpers.prometheus import RULES, SCRAPE, TARGETS, load_yaml, tool

from jlservice.admin import tls

TLS_LINES = ("    # tls_config:\n", "    #   ca_file: jlservice-ca.crt\n")


def check_config(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [tool("promtool"), "check", "config", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def install(directory: Path, text: str) -> Path:
    """scrape.yml as /etc/prometheus/prometheus.yml with the files beside it, in `directory`."""
    config = directory / "prometheus.yml"
    config.write_text(text)
    shutil.copy(RULES, directory / RULES.name)
    (directory / "jlservice.token").write_text("0123456789abcdef\n")
    (directory / "jlservice-targets").mkdir()
    shutil.copy(TARGETS, directory / "jlservice-targets" / TARGETS.name)
    return config


def test_the_shipped_file_is_valid_syntax() -> None:
    assert "SUCCESS" in check_config("--syntax-only", str(SCRAPE))


def test_installed_with_its_files_it_passes_every_check(tmp_path: Path) -> None:
    """The rules load, the token file is there, the example targets file parses."""
    config = install(tmp_path, SCRAPE.read_text())
    out = check_config(config.name, cwd=tmp_path)
    assert "SUCCESS: 1 rule files found" in out
    rules = sum(len(group["rules"]) for group in load_yaml(RULES)["groups"])
    assert f"SUCCESS: {rules} rules found" in out


def test_with_tls_switched_on_it_passes_every_check(tmp_path: Path) -> None:
    text = SCRAPE.read_text()
    for line in TLS_LINES:
        assert line in text, f"scrape.yml no longer has the line {line!r}"
        text = text.replace(line, line.replace("# ", "", 1))
    config = install(tmp_path, text)
    (job,) = load_yaml(config)["scrape_configs"]
    assert job["tls_config"] == {"ca_file": "jlservice-ca.crt"}
    cert, _key = tls.self_signed(["metrics.example.org"], days=30)
    (tmp_path / "jlservice-ca.crt").write_bytes(cert)
    check_config(config.name, cwd=tmp_path)
