"""[metrics]: defaults, strict one-line errors, the effective configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jlservice import config

IS_ROOT = os.geteuid() == 0


def load(write_config, lab_base, metrics: str) -> config.Config:
    lab = "\n".join(f"{k} = {v!r}".replace("True", "true") for k, v in lab_base.items())
    return config.load(write_config(f"[lab]\n{lab}\nport = 8888\n\n[metrics]\n{metrics}\n"))


def test_defaults_listen_on_loopback_only(write_config, lab_base) -> None:
    m = load(write_config, lab_base, "").metrics
    assert (m.enabled, m.listen, m.gpu, m.interval) == (True, "127.0.0.1:9877", True, 5.0)
    assert m.address == ("127.0.0.1", 9877)


def test_ipv6_listen(write_config, lab_base) -> None:
    m = load(write_config, lab_base, 'listen = "[::1]:9100"\ninterval = 1').metrics
    assert (m.listen, m.address, m.interval) == ("[::1]:9100", ("::1", 9100), 1.0)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('listen = "localhost:9877"', "[metrics] listen: 'localhost' is not an IP address"),
        ('listen = "127.0.0.1"', "[metrics] listen: '127.0.0.1': expected IP:PORT"),
        ('listen = "127.0.0.1:70000"', "[metrics] listen: 70000 is not a port (1–65535)"),
        ('listen = "0.0.0.0:8888"', "[metrics] listen: port 8888 is JupyterLab's ([lab] port)"),
        ("interval = 0.1", "[metrics] interval: 0.1 is out of range (0.5–86400 seconds)"),
        ('gpu = "yes"', "[metrics] gpu: expected a boolean, got a string"),
        (
            "port = 9100",
            "[metrics] port: unknown key; known: bearer_token_file, enabled, gpu, interval, "
            "listen, notebook_labels",
        ),
        ('bearer_token = "x"', "[metrics] bearer_token: unknown key"),  # read from a file only
        ('bearer_token_file = ""', "[metrics] bearer_token_file: is empty"),
        ("notebook_labels = 0", "[metrics] notebook_labels: expected a boolean, got an integer"),
    ],
)
def test_errors_are_one_line_naming_the_key(write_config, lab_base, line, problem) -> None:
    with pytest.raises(config.ConfigError) as caught:
        load(write_config, lab_base, line)
    message = str(caught.value)
    assert "\n" not in message
    assert problem in message, message


def test_effective_configuration_shows_metrics(write_config, lab_base) -> None:
    text = config.render(load(write_config, lab_base, 'listen = "[::1]:9100"\ngpu = false'))
    section = text.split("[metrics]\n", 1)[1]
    assert section.splitlines() == [
        "enabled = true",
        'listen = "[::1]:9100"',
        "gpu = false",
        "interval = 5.0",
        "notebook_labels = true",
    ]


# ── [metrics] bearer_token_file ─────────────────────────────────────────────

TOKEN = "f00dfeed" * 8


def _token_file(tmp_path: Path, content: str = TOKEN + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "metrics.token"
    path.write_text(content)
    path.chmod(mode)
    return path


def test_the_token_is_read_from_its_file_and_never_shown(write_config, lab_base, tmp_path):
    _token_file(tmp_path)  # relative: to the configuration file's directory
    loaded = load(write_config, lab_base, 'bearer_token_file = "metrics.token"')
    m = loaded.metrics
    assert (m.bearer_token, m.bearer_token_file) == (TOKEN, tmp_path / "metrics.token")
    assert TOKEN not in repr(loaded)
    text = config.render(loaded)
    assert TOKEN not in text
    assert f'bearer_token_file = "{tmp_path / "metrics.token"}"' in text
    assert load(write_config, lab_base, "").metrics.bearer_token == ""


@pytest.mark.skipif(not IS_ROOT, reason="needs root to give the file another group")
def test_a_group_without_the_lab_user_may_read_it(write_config, lab_base, tmp_path) -> None:
    """root:prometheus 0640: the Prometheus of this machine reads the same file."""
    path = _token_file(tmp_path, mode=0o640)
    nogroup = next(g for g in (65534, 65533) if g not in os.getgrouplist("root", 0))
    os.chown(path, 0, nogroup)
    assert load(write_config, lab_base, f'bearer_token_file = "{path}"').metrics.bearer_token


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        (TOKEN, 0o644, "is mode 0644, readable by every user: `chmod 600 "),
        (TOKEN, 0o620, "is mode 0620, writable by others: `chmod 600 "),
        (TOKEN, 0o602, "is mode 0602, writable by others"),
        ("short", 0o600, "must hold one token of 16–4096 printable characters without spaces"),
        (TOKEN + " " + TOKEN, 0o600, "must hold one token of 16–4096 printable characters"),
        ("é" * 20, 0o600, "must hold one token of 16–4096 printable characters"),
        ("x" * 5000, 0o600, "must hold one token of 16–4096 printable characters"),
    ],
)
def test_a_token_file_that_is_no_secret_is_refused(
    write_config, lab_base, tmp_path, content, mode, problem
) -> None:
    path = _token_file(tmp_path, content, mode)
    with pytest.raises(config.ConfigError) as caught:
        load(write_config, lab_base, f'bearer_token_file = "{path}"')
    message = str(caught.value)
    assert f"[metrics] bearer_token_file: {path} " in message
    assert problem in message, message
    assert content not in message


@pytest.mark.skipif(not IS_ROOT, reason="needs root to chown")
def test_a_token_file_the_lab_user_could_read_or_change_is_refused(
    write_config, lab_base, tmp_path
) -> None:
    path = _token_file(tmp_path, mode=0o640)  # group root: the lab user (root here) is in it
    os.chown(path, 0, 0)
    with pytest.raises(config.ConfigError, match=r"readable by its group \(gid 0\), which root"):
        load(write_config, lab_base, f'bearer_token_file = "{path}"')
    path.chmod(0o600)
    os.chown(path, 65534, 0)
    with pytest.raises(config.ConfigError, match="belongs to uid 65534, who could change it"):
        load(write_config, lab_base, f'bearer_token_file = "{path}"')


def test_a_fifo_directory_or_missing_token_file_is_an_error_at_once(
    write_config, lab_base, tmp_path
):
    fifo = tmp_path / "fifo.token"
    os.mkfifo(fifo, 0o600)  # nobody writes to it: a blocking open would hang root
    with pytest.raises(config.ConfigError, match=r"fifo\.token is not a regular file"):
        load(write_config, lab_base, f'bearer_token_file = "{fifo}"')
    with pytest.raises(config.ConfigError, match=r"does not exist; create it: \(umask 077;"):
        load(write_config, lab_base, f'bearer_token_file = "{tmp_path / "none"}"')
    # A directory (found by the fuzzer: IsADirectoryError, a traceback).
    with pytest.raises(config.ConfigError, match=r"is not a regular file"):
        load(write_config, lab_base, f'bearer_token_file = "{tmp_path}"')
