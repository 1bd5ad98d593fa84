"""[auth], [tls], [lab] public_url: validation, refusals, warnings, and what the launch gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.service import render_toml as toml_text

from jlservice import config, users
from jlservice.admin import tls
from jlservice.config.access import open_to_local_users, risks
from jlservice.start import launcher


def load_error(path: Path) -> str:
    """The one-line ConfigError that loading `path` raises."""
    with pytest.raises(config.ConfigError) as info:
        config.load(path, environ={}, cwd=path.parent)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def _hash_file(tmp_path: Path, mode: int = 0o600, text: str = "argon2:$argon2id$v=19$x") -> Path:
    path = tmp_path / "password"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _load(path: Path) -> config.Config:
    return config.load(path, environ={}, cwd=path.parent)


def test_password_file_is_read_and_never_rendered(write_config, lab_base, tmp_path) -> None:
    hashed = _hash_file(tmp_path)
    cfg = _load(write_config(toml_text({"lab": lab_base, "auth": {"password_file": "password"}})))
    assert cfg.auth.password_file == hashed  # relative to the configuration file
    assert cfg.auth.password_hash == "argon2:$argon2id$v=19$x"
    rendered = config.render(cfg)
    assert f'password_file = "{hashed}"' in rendered and "argon2" not in rendered
    assert "argon2" not in repr(cfg)


@pytest.mark.parametrize(
    ("mode", "text", "problem"),
    [
        (0o640, "argon2:$x", "is mode 0640, readable by others: `chmod 600"),
        (0o600, "hunter2 in clear", "does not hold a password hash; write it with"),
    ],
)
def test_bad_password_files(write_config, lab_base, tmp_path, mode, text, problem) -> None:
    _hash_file(tmp_path, mode, text)
    doc = {"lab": lab_base, "auth": {"password_file": "password"}}
    message = load_error(write_config(toml_text(doc)))
    assert "[auth] password_file: " in message and problem in message


def test_missing_password_file(write_config, lab_base, tmp_path) -> None:
    doc = {"lab": lab_base, "auth": {"password_file": "/nonexistent/pw"}}
    assert load_error(write_config(toml_text(doc))).endswith(
        "[auth] password_file: /nonexistent/pw does not exist; create it with `jlservice password`"
    )


def _pair(tmp_path: Path, name: str = "a") -> tuple[Path, Path]:
    cert_pem, key_pem = tls.self_signed(["127.0.0.1"], 30)
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return cert, key


def test_tls_needs_both_files_a_real_pair_and_a_private_key(
    write_config, lab_base, tmp_path
) -> None:
    cert, key = _pair(tmp_path)
    only = {"lab": lab_base, "tls": {"certfile": str(cert)}}
    assert "[tls] keyfile: missing: give both" in load_error(write_config(toml_text(only)))
    _, other_key = _pair(tmp_path, "b")
    mixed = {"lab": lab_base, "tls": {"certfile": str(cert), "keyfile": str(other_key)}}
    assert "the key does not belong to the certificate" in load_error(
        write_config(toml_text(mixed))
    )
    key.chmod(0o644)
    both = {"lab": lab_base, "tls": {"certfile": str(cert), "keyfile": str(key)}}
    assert "[tls] keyfile: " in load_error(write_config(toml_text(both)))
    key.chmod(0o600)
    assert _load(write_config(toml_text(both))).tls.enabled


def test_open_access_is_refused_off_loopback_only(write_config, lab_base, tmp_path) -> None:
    off = {"token": False}
    message = load_error(write_config(toml_text({"lab": {**lab_base, "ip": "::"}, "auth": off})))
    assert "[lab] ip: :: with [auth] token = false and no password_file" in message
    assert _load(write_config(toml_text({"lab": lab_base, "auth": off}))).auth.token is False
    _hash_file(tmp_path)
    with_password = {"token": False, "password_file": "password"}
    doc = {"lab": {**lab_base, "ip": "0.0.0.0"}, "auth": with_password}
    assert _load(write_config(toml_text(doc))).lab.ip == "0.0.0.0"


def test_a_proxy_in_front_of_no_login_is_refused(write_config, lab_base, tmp_path) -> None:
    lab = {**lab_base, "public_url": "https://jupyter.example.test/"}
    message = load_error(write_config(toml_text({"lab": lab, "auth": {"token": False}})))
    assert "[lab] public_url: https://jupyter.example.test/ with [auth] token = false" in message
    assert "anyone who reaches the proxy run code as" in message
    assert _load(write_config(toml_text({"lab": lab}))).lab.public_url  # with the token


def test_no_login_on_loopback_is_a_warning_when_others_have_accounts(
    write_config, lab_base, monkeypatch
) -> None:
    cfg = _load(write_config(toml_text({"lab": lab_base, "auth": {"token": False}})))
    monkeypatch.setattr(users, "people", lambda but: [])
    assert open_to_local_users(cfg.lab, cfg.auth, cfg.account.uid) is None
    monkeypatch.setattr(users, "people", lambda but: ["ann", "bob", "cy", "dee", "eve"])
    problem = open_to_local_users(cfg.lab, cfg.auth, cfg.account.uid)
    assert problem is not None
    assert "every local account (ann, bob, cy and 2 more) can reach JupyterLab on" in problem
    assert f"run code as {cfg.lab.user}; set a password (`jlservice password`)" in problem
    with_token = _load(write_config(toml_text({"lab": lab_base})))
    assert open_to_local_users(with_token.lab, with_token.auth, cfg.account.uid) is None


@pytest.mark.parametrize(
    "key", ["ServerApp.password", "PasswordIdentityProvider.hashed_password", "ServerApp.certfile"]
)
def test_access_traits_are_managed(write_config, lab_base, key) -> None:
    doc = {"lab": {**lab_base, "options": {key: "x"}}}
    assert "is managed by jlservice; use " in load_error(write_config(toml_text(doc)))


@pytest.mark.parametrize(
    ("given", "base_url", "expected"),
    [
        ("https://jupyter.example.org", "/", "https://jupyter.example.org/"),
        ("https://example.org/", "/jupyter/", "https://example.org/jupyter/"),
        ("http://example.org:8080/jupyter", "/jupyter/", "http://example.org:8080/jupyter/"),
    ],
)
def test_public_url(write_config, lab_base, given, base_url, expected) -> None:
    doc = {"lab": {**lab_base, "public_url": given, "base_url": base_url}}
    assert _load(write_config(toml_text(doc))).lab.public_url == expected


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("jupyter.example.org", "must be an http(s) URL"),
        ("https://example.org/other/", "its path /other/ must be base_url /"),
        ("https://example.org/?a=1", "must be an http(s) URL"),
    ],
)
def test_bad_public_url(write_config, lab_base, given, problem) -> None:
    message = load_error(write_config(toml_text({"lab": {**lab_base, "public_url": given}})))
    assert "[lab] public_url: " in message and problem in message


def test_wildcard_origins_are_risks() -> None:
    assert risks({"ServerApp.allow_origin": "https://a.example"}, "u") == []
    assert len(risks({"ServerApp.allow_origin": "*"}, "u")) == 1
    assert len(risks({"ServerApp.allow_origin_pat": ".*"}, "u")) == 1
    assert risks({"ServerApp.allow_origin_pat": r"https://a\.example"}, "u") == []


def test_launch_carries_hash_and_tls_in_files_not_argv(write_config, lab_base, tmp_path) -> None:
    _hash_file(tmp_path)
    cert, key = _pair(tmp_path)
    doc = {
        "lab": {**lab_base, "public_url": "https://a.example/"},
        "auth": {"password_file": "password"},
        "tls": {"certfile": str(cert), "keyfile": str(key)},
        "service": {"state_dir": str(tmp_path / "s"), "runtime_dir": str(tmp_path / "r")},
    }
    path = write_config(toml_text(doc))
    launch = launcher.build(_load(path), environ={"PATH": "/usr/bin"})
    assert not any("argon2" in a for a in launch.argv)
    private = tmp_path / "r" / "lab"
    assert not any("config_file" in a for a in launch.argv)  # it would hide the user's own
    assert launch.env["JUPYTER_CONFIG_PATH"].split(":")[0] == str(private / "config")
    assert f"--ServerApp.certfile={private / 'tls.crt'}" in launch.argv
    hashed = launch.files["config/jupyter_server_config.json"]
    settings = json.loads(hashed)["PasswordIdentityProvider"]
    assert settings == {
        "hashed_password": "argon2:$argon2id$v=19$x",
        "allow_password_change": False,
    }
    assert launch.files["tls.key"] == key.read_bytes()
    assert launch.url == "https://a.example/" and launch.scheme == "https"
    assert launch.api_url.startswith("https://127.0.0.1:")
    assert "argon2" not in repr(launch) and "PRIVATE" not in repr(launch)

    # A new password is a different launch (a reload restarts JupyterLab)…
    _hash_file(tmp_path, text="argon2:$argon2id$v=19$other")
    assert launcher.build(_load(path), environ={"PATH": "/usr/bin"}) != launch
    # …a new public_url alone is not (JupyterLab sees only that there is one: it then
    # accepts the proxy's host name).
    assert "--ServerApp.allow_remote_access=True" in launch.argv
    _hash_file(tmp_path)
    doc["lab"]["public_url"] = "https://b.example/"
    moved = launcher.build(_load(write_config(toml_text(doc))), environ={"PATH": "/usr/bin"})
    assert moved == launch and moved.url == "https://b.example/"
