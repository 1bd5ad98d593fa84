"""config.edit: `jlservice password` and `cert` set keys without disturbing the file."""

from __future__ import annotations

import os
import stat

from jlservice.config import edit


def test_appends_a_missing_section_and_keeps_everything_else(tmp_path) -> None:
    path = tmp_path / "j.toml"
    path.write_text("# mine\n[lab]\nport = 1234  # keep\n")
    path.chmod(0o640)
    edit.set_keys(path, "tls", {"certfile": "/a b/c.crt", "keyfile": '/k"ey'})
    assert path.read_text() == (
        "# mine\n[lab]\nport = 1234  # keep\n\n"
        '[tls]\ncertfile = "/a b/c.crt"\nkeyfile = "/k\\"ey"\n'
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_replaces_or_inserts_within_an_existing_section(tmp_path) -> None:
    path = tmp_path / "j.toml"
    path.write_text('[auth]\ntoken = true\npassword_file = "old"\n\n[log]\nlevel = "info"\n')
    edit.set_keys(path, "auth", {"password_file": "/new"})
    edit.set_keys(path, "log", {"format": "json"})
    assert path.read_text() == (
        '[auth]\ntoken = true\npassword_file = "/new"\n\n[log]\nformat = "json"\nlevel = "info"\n'
    )


def test_lines_to_add() -> None:
    assert edit.lines_to_add("auth", {"password_file": "/p"}) == '[auth]\npassword_file = "/p"\n'


def test_keeps_the_owner(tmp_path) -> None:
    path = tmp_path / "j.toml"
    path.write_text("")
    before = path.stat()
    edit.set_keys(path, "auth", {"password_file": "/p"})
    assert (path.stat().st_uid, path.stat().st_gid) == (before.st_uid, before.st_gid)
    assert os.listdir(tmp_path) == ["j.toml"]  # no temporary file left behind
