"""[metrics]: defaults, strict one-line errors, the effective configuration."""

from __future__ import annotations

import pytest

from jlservice import config


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
        ("port = 9100", "[metrics] port: unknown key; known: enabled, gpu, interval, listen"),
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
    ]
