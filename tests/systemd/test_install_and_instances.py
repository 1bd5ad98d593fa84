"""`jlservice install` / `uninstall` and the template unit, under a real systemd."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from pathlib import Path

import psutil
import tomllib
from helpers.procs import free_port, pid_alive, wait_for
from helpers.service import LabClient
from sandbox import JLSERVICE, Sandbox, jupyterlab_pid

from jlservice.admin.unit_files import NOTEBOOK_DROP_IN


def test_two_template_instances_run_two_users_on_two_ports(
    sandbox: Sandbox, other_user, second_user
) -> None:
    ports = {}
    for account in (other_user, second_user):
        ports[account.name] = free_port()
        out = sandbox.run(
            JLSERVICE, "install", "--instance", account.name, "--port", str(ports[account.name])
        ).stdout
        assert f"systemctl enable --now jlservice@{account.name}" in out
        assert f"jlservice token --url --config /etc/jlservice/{account.name}.toml" in out
        sandbox.log_to_file(f"jlservice@{account.name}.service")
    sandbox.systemctl("daemon-reload")
    for name in ports:
        sandbox.systemctl("enable", "--now", f"jlservice@{name}")
    for name, port in ports.items():
        config = f"/etc/jlservice/{name}.toml"
        token = sandbox.run(JLSERVICE, "token", "--config", config).stdout.strip()
        lab = LabClient(f"http://127.0.0.1:{port}/")
        assert lab.api("GET", "api/status", token).status_code == 200
        # Each instance has its own state dir (and so its own token), and runs as its user.
        state = sandbox.root / "var-lib" / "jlservice" / name / "state.json"
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        main = sandbox.host_pid(int(sandbox.show(f"jlservice@{name}", "MainPID")["MainPID"]))
        assert psutil.Process(jupyterlab_pid(main)).username() == name
    tokens = {
        name: sandbox.run(JLSERVICE, "token", "--config", f"/etc/jlservice/{name}.toml").stdout
        for name in ports
    }
    assert len(set(tokens.values())) == 2

    # The default service beside them: stopping it leaves the instances' runtime dirs alone
    # (kernel connection files live there), so they still start kernels.
    sandbox.run(JLSERVICE, "install", "--user", other_user.name, "--port", str(free_port()))
    sandbox.systemctl("start", "jlservice")
    sandbox.systemctl("stop", "jlservice")
    name = second_user.name
    lab = LabClient(f"http://127.0.0.1:{ports[name]}/")
    kernel = lab.api("POST", "api/kernels", tokens[name].strip(), json={"name": "python3"})
    assert kernel.status_code == 201, kernel.text


def test_install_twice_changes_nothing_and_never_overwrites_the_config(
    sandbox: Sandbox, other_user
) -> None:
    port = free_port()
    first = sandbox.run(JLSERVICE, "install", "--user", other_user.name, "--port", str(port))
    config = sandbox.root / "etc-jlservice" / "jlservice.toml"
    unit = sandbox.root / "etc-systemd" / "jlservice.service"
    written = tomllib.loads(config.read_text())["lab"]
    assert written == {"user": other_user.name, "notebook_dir": other_user.home, "port": port}
    assert f"ExecStart={JLSERVICE} run --config /etc/jlservice/jlservice.toml" in unit.read_text()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert "wrote /etc/jlservice/jlservice.toml" in first.stdout

    config.write_text(config.read_text() + "# my own edit\n")
    before = (config.read_bytes(), unit.read_bytes())
    second = sandbox.run(JLSERVICE, "install", "--user", other_user.name, "--port", "9")
    assert (config.read_bytes(), unit.read_bytes()) == before
    assert "kept /etc/jlservice/jlservice.toml" in second.stdout
    assert f"not applied: port (the file says {port}, not 9)" in second.stdout
    assert "notebook_dir" not in second.stdout  # not asked for, so not "not applied"
    assert "/etc/systemd/system/jlservice.service is up to date" in second.stdout
    # Run again without naming the user (e.g. to point ExecStart at an upgraded jlservice).
    third = sandbox.run(JLSERVICE, "install")  # fails the test unless it exits 0
    assert (config.read_bytes(), unit.read_bytes()) == before
    assert "kept /etc/jlservice/jlservice.toml" in third.stdout
    assert "/etc/systemd/system/jlservice.service is up to date" in third.stdout
    assert "not applied" not in third.stdout  # it was asked for nothing
    assert sandbox.show("jlservice", "LoadState")["LoadState"] == "loaded"


def test_install_refuses_what_cannot_run(sandbox: Sandbox, other_user) -> None:
    missing = sandbox.run(JLSERVICE, "install", "--user", "no-such-user-x", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "jlservice: no such user 'no-such-user-x': create it first (useradd)"
    )
    bad_dir = sandbox.run(
        JLSERVICE,
        "install",
        "--user",
        other_user.name,
        "--notebook-dir",
        "/nonexistent/nb",
        check=False,
    )
    assert bad_dir.returncode == 78
    assert "[lab] notebook_dir" in bad_dir.stderr
    assert len(bad_dir.stderr.strip().splitlines()) == 1
    assert not (sandbox.root / "etc-jlservice" / "jlservice.toml").exists()
    assert not (sandbox.root / "etc-systemd" / "jlservice.service").exists()


def test_uninstall_stops_and_removes_the_unit_and_purge_removes_the_rest(
    sandbox: Sandbox, other_user
) -> None:
    sandbox.run(JLSERVICE, "install", "--user", other_user.name, "--port", str(free_port()))
    sandbox.systemctl("enable", "--now", "jlservice")
    main = sandbox.host_pid(int(sandbox.show("jlservice", "MainPID")["MainPID"]))
    state_dir = sandbox.root / "var-lib" / "jlservice"
    assert (state_dir / "state.json").exists()

    admins = sandbox.root / "etc-systemd" / "jlservice.service.d" / "override.conf"
    admins.parent.mkdir(exist_ok=True)
    admins.write_text("[Service]\nEnvironment=MINE=1\n")  # what `systemctl edit` makes
    foreign = state_dir / "notes.ipynb"  # not jlservice's: --purge must leave it
    foreign.write_text("{}")

    out = sandbox.run(JLSERVICE, "uninstall").stdout
    assert "stopped and disabled jlservice" in out
    assert admins.exists()
    assert "kept your drop-ins in /etc/systemd/system/jlservice.service.d" in out
    wait_for(lambda: not pid_alive(main), 60, "jlservice to stop")
    assert not (sandbox.root / "etc-systemd" / "jlservice.service").exists()
    assert not list((sandbox.root / "etc-systemd").glob("*.wants/jlservice.service"))
    assert sandbox.show("jlservice", "LoadState")["LoadState"] == "not-found"
    assert (sandbox.root / "etc-jlservice" / "jlservice.toml").exists()
    assert (state_dir / "state.json").exists(), "the token survives a plain uninstall"

    again = sandbox.run(JLSERVICE, "uninstall", "--purge").stdout
    assert "removed /etc/jlservice/jlservice.toml" in again
    assert not (sandbox.root / "etc-jlservice" / "jlservice.toml").exists()
    assert sorted(p.name for p in state_dir.iterdir()) == ["notes.ipynb"]
    # Once more: nothing is left to remove, and that is no error (sandbox.run checks the exit).
    third = sandbox.run(JLSERVICE, "uninstall", "--purge").stdout
    assert "removed" not in third and "stopped" not in third, third
    assert sorted(p.name for p in state_dir.iterdir()) == ["notes.ipynb"]


def test_install_as_non_root_points_to_user_unit(sandbox: Sandbox, other_user) -> None:
    result = sandbox.run(
        "setpriv",
        f"--reuid={other_user.uid}",
        f"--regid={other_user.gid}",
        "--clear-groups",
        JLSERVICE,
        "install",
        check=False,
        env={**os.environ, "HOME": other_user.home},
    )
    assert result.returncode == 1
    assert "run this as root (sudo), or add --user-unit" in result.stderr


def test_notebook_dir_outside_home_is_made_writable_by_a_drop_in(
    sandbox: Sandbox, other_user
) -> None:
    notebooks = Path(f"/opt/jlservice-test-notebooks-{secrets.token_hex(3)}")
    notebooks.mkdir()
    try:
        os.chown(notebooks, other_user.uid, other_user.gid)
        port = free_port()
        out = sandbox.run(
            JLSERVICE,
            "install",
            "--user",
            other_user.name,
            "--notebook-dir",
            str(notebooks),
            "--port",
            str(port),
        ).stdout
        drop_in = sandbox.root / "etc-systemd" / "jlservice.service.d" / NOTEBOOK_DROP_IN
        assert f"ReadWritePaths=-{notebooks}\n" in drop_in.read_text()
        assert "makes" in out and str(notebooks) in out
        log = sandbox.log_to_file("jlservice.service")
        sandbox.systemctl("daemon-reload")
        sandbox.systemctl("start", "jlservice")
        token = sandbox.run(JLSERVICE, "token").stdout.strip()
        lab = LabClient(f"http://127.0.0.1:{port}/")
        saved = lab.api("PUT", "api/contents/saved.txt", token, json=SAVE)
        assert saved.status_code == 201, saved.text
        assert (notebooks / "saved.txt").read_text() == "kept"

        # Without it, ProtectSystem=strict makes the directory read-only: saving fails, and
        # jlservice says why and what to do.
        drop_in.unlink()
        sandbox.systemctl("daemon-reload")
        sandbox.systemctl("restart", "jlservice")
        refused = lab.api("PUT", "api/contents/lost.txt", token, json=SAVE)
        assert refused.status_code >= 400
        assert "notebook_dir_read_only" in log.read_text()
        assert f"ReadWritePaths=-{notebooks}" in log.read_text()
    finally:
        sandbox.crash()  # nothing may hold the directory while it goes
        shutil.rmtree(notebooks)


SAVE = {"type": "file", "format": "text", "content": "kept"}
