"""install: the unit as written (ExecStart), the config as written, targets, state defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from jlservice import config
from jlservice.admin import install, unit_files
from jlservice.config import service

TEMPLATE = """[Service]
Type=notify
ExecStart=/opt/jlservice/bin/jlservice run --config /etc/jlservice/%i.toml
ExecReload=/bin/kill -HUP $MAINPID
"""


def test_execstart_runs_the_given_program_with_the_units_arguments() -> None:
    unit = unit_files.render_unit(TEMPLATE, ["/srv/venvs/jl/bin/jlservice"])
    assert "ExecStart=/srv/venvs/jl/bin/jlservice run --config /etc/jlservice/%i.toml\n" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID\n" in unit  # other lines untouched
    assert unit.startswith("# Written by `jlservice install`")


def test_execstart_quotes_what_systemd_would_split_or_expand() -> None:
    unit = unit_files.render_unit(TEMPLATE, ["/opt/my venv/bin/python", "-m", "jlservice"])
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    assert (
        line
        == "ExecStart='/opt/my venv/bin/python' -m jlservice run --config /etc/jlservice/%i.toml"
    )
    odd = unit_files.render_unit(TEMPLATE, ["/opt/100%/$HOME/jlservice"])
    assert "ExecStart=/opt/100%%/$$HOME/jlservice run" in odd


@pytest.mark.parametrize("name", ['we"ird', "back\\slash", "ünï cödé"])
def test_config_as_written_reads_back_exactly(name: str) -> None:
    text = unit_files.render_config({"user": name, "notebook_dir": f"/srv/{name}", "port": 8890})
    assert tomllib.loads(text)["lab"] == {
        "user": name,
        "notebook_dir": f"/srv/{name}",
        "port": 8890,
    }


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "x@y", "a b", "jlservice"])
def test_instance_names_that_are_not_user_names_are_refused(bad: str) -> None:
    with pytest.raises(install.InstallError, match="use a user name"):
        install.system_target(bad)


def test_targets_name_their_unit_config_and_systemctl(tmp_path: Path) -> None:
    alice = install.system_target("alice")
    assert (alice.service, alice.unit_file, str(alice.config_path)) == (
        "jlservice@alice",
        "jlservice@.service",
        "/etc/jlservice/alice.toml",
    )
    mine = install.user_target({"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "c")})
    assert mine.unit_dir == tmp_path / "c" / "systemd" / "user"
    assert mine.config_path == tmp_path / "c" / "jlservice" / "jlservice.toml"
    assert mine.systemctl == ("systemctl", "--user")


def test_systemctl_missing_is_one_clear_error(tmp_path: Path) -> None:
    target = install.Target("jlservice", "jlservice.service", tmp_path, tmp_path / "c.toml", ())

    def no_systemctl(argv):
        raise FileNotFoundError(argv[0] if argv else "systemctl")

    with pytest.raises(install.InstallError, match="systemctl not found") as caught:
        install.uninstall(target, purge=False, run=no_systemctl)
    assert caught.value.done == []


def test_instance_state_lives_where_the_template_unit_puts_it(monkeypatch) -> None:
    monkeypatch.setattr(service.os, "geteuid", lambda: 0)
    default = config.load_service(None, environ={})
    assert default.state_dir == Path("/var/lib/jlservice")
    reader = service.Reader("x")
    inst = service.parse_service(reader, {}, {}, Path("/etc/jlservice/alice.toml"))
    assert (inst.state_dir, inst.runtime_dir) == (
        Path("/var/lib/jlservice/alice"),
        Path("/run/jlservice-alice"),
    )
    under_systemd = service.parse_service(
        reader,
        {},
        {"STATE_DIRECTORY": "/var/lib/jlservice/alice"},
        Path("/etc/jlservice/alice.toml"),
    )
    assert under_systemd.state_dir == Path("/var/lib/jlservice/alice")
    elsewhere = service.parse_service(reader, {}, {}, Path("/srv/alice.toml"))
    assert elsewhere.state_dir == Path("/var/lib/jlservice")


def test_a_user_finds_their_own_config_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(service.os, "geteuid", lambda: 1000)
    own = tmp_path / "jlservice" / "jlservice.toml"
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert service.locate(None, environ) in (None, service.DEFAULT_PATH)
    own.parent.mkdir()
    own.write_text("")
    assert service.locate(None, environ) == own
    assert service.locate(None, {**environ, "JLSERVICE_CONFIG": "/x.toml"}) == Path("/x.toml")


def test_notebook_drop_in_only_outside_home_and_srv() -> None:
    assert unit_files.notebook_drop_in(Path("/home/alice/nb")) is None
    assert unit_files.notebook_drop_in(Path("/srv/jupyter")) is None
    text = unit_files.notebook_drop_in(Path("/data/my notebooks/100%"))
    assert text.endswith('[Service]\nReadWritePaths="-/data/my notebooks/100%%"\n')


def test_root_refuses_to_run_what_another_user_can_change(tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root: the files must be root's, then another user's")
    script = tmp_path / "bin" / "jlservice"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.parent.chmod(0o755)
    os.chown(script, 65534, 65534)
    why = unit_files.untrusted_for_root([str(script)])
    assert why == f"{script} is owned by uid 65534, not root"
    os.chown(script, 0, 0)
    script.parent.chmod(0o757)
    assert unit_files.untrusted_for_root([str(script)]) == f"{script.parent} is writable by others"
    script.parent.chmod(0o1777)  # sticky, like /tmp: others cannot replace root's files
    assert unit_files.untrusted_for_root([str(script)]) is None
