"""config: strict validation with one-line errors, defaults, file location, render()."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jlservice import config, users
from jlservice.start import launcher

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
ME = pwd.getpwuid(os.geteuid()).pw_name


def toml_string(text: str) -> str:
    """A TOML basic string: escape quotes, backslashes and every control character."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_text(doc: dict) -> str:
    """A small TOML writer for test documents (tables, strings, numbers, bools, lists)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return toml_string(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{toml_string(k)} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines: list[str] = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        lines.extend(f"{toml_string(k)} = {value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def assert_one_line(message: str, source: str) -> None:
    assert "\n" not in message and "\r" not in message, repr(message)
    assert message.startswith(f"{source}: "), message


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    """The ConfigError that loading `path` raises, checked to be one line naming the file."""
    with pytest.raises(config.ConfigError) as info:
        config.load(path, environ={} if environ is None else environ, cwd=path.parent)
    message = str(info.value)
    assert_one_line(message, str(path))
    return message


def lab_error(write_config, lab_base, **lab: object) -> str:
    """The error for a file whose [lab] is the valid base with `lab` merged in."""
    return load_error(write_config(toml_text({"lab": {**lab_base, **lab}})))


def load_lab(write_config, lab_base, tmp_path: Path, **lab: object) -> config.Config:
    path = write_config(toml_text({"lab": {**lab_base, **lab}}))
    return config.load(path, environ={}, cwd=tmp_path)


# --- the file itself -------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.toml")
    assert "no such file" in message


def test_directory_as_config_path(tmp_path: Path) -> None:
    directory = tmp_path / "conf.d"
    directory.mkdir()
    assert "is a directory" in load_error(directory)


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    load_error(tmp_path / "file" / "jlservice.toml")


@pytest.mark.parametrize(
    "text",
    [
        "[lab\nport = 1\n",
        "[lab]\nport = = 8888\n",
        "[lab]\nport = 8888\nport = 8889\n",
        'port = "unterminated\n',
        "[lab]\n[lab]\n",
    ],
)
def test_invalid_toml(write_config, text: str) -> None:
    assert "invalid TOML" in load_error(write_config(text))


def test_not_utf8(write_config) -> None:
    message = load_error(write_config(b'[lab]\nuser = "\xff\xfe"\n'))
    assert "UTF-8" in message


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 50_000 + "]" * 50_000,  # beyond the parser's recursion
        "x = " + "{a = " * 50_000 + "1" + "}" * 50_000,
        "x = " + "[" * 40 + "]" * 40,  # parsed, deeper than any setting
        "[lab.options]\n" + ".".join(["a"] * 40) + " = 1",  # dotted keys nest without recursion
    ],
    ids=["arrays", "inline-tables", "40-arrays", "dotted-keys"],
)
def test_deeply_nested_toml(write_config, text: str) -> None:
    assert "nested deeper than 32 levels" in load_error(write_config(text))


def test_nesting_a_setting_can_use_is_accepted(write_config, lab_base, tmp_path: Path) -> None:
    options = {"ServerApp.terminado_settings": {"term_name": "xterm-256color"}}
    loaded = load_lab(write_config, lab_base, tmp_path, options=options)
    setting = dict(loaded.lab.options["ServerApp.terminado_settings"])
    assert setting == {"term_name": "xterm-256color"}


def test_huge_file_is_refused_without_parsing_it(write_config) -> None:
    path = write_config("# padding\n" * 500_000)  # 5 MB of valid TOML
    start = time.monotonic()
    message = load_error(path)
    assert "larger than 1 MiB" in message
    assert time.monotonic() - start < 1.0


@needs_root
def test_unreadable_file_as_other_user(open_dir: Path) -> None:
    """A 0600 file of root read by 'nobody': one line, not a traceback."""
    import subprocess

    path = open_dir / "jlservice.toml"
    path.write_text("[lab]\n")
    path.chmod(0o600)
    code = (
        "import sys; from pathlib import Path; from jlservice import config\n"
        "try: config.load(Path(sys.argv[1]), environ={})\n"
        "except config.ConfigError as e: print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        user="nobody",
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{path}: permission denied"), out.stdout


# --- unknown names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "hint"),
    [
        ("[lab]\nprot = 8888\n", "[lab] prot", "port"),
        ("[lab]\nnotebookdir = '/tmp'\n", "[lab] notebookdir", "notebook_dir"),
        ("[restart]\nmax_delays = 3\n", "[restart] max_delays", "max_delay"),
        ("[health]\nintervall = 3\n", "[health] intervall", "interval"),
        ("[log]\nlevels = 'info'\n", "[log] levels", "level"),
        ("[service]\nstate_directory = '/x'\n", "[service] state_directory", "state_dir"),
        ("[labb]\nport = 1\n", "labb", "lab"),
        ("[healt]\n", "healt", "health"),
    ],
)
def test_unknown_names_suggest_the_closest(
    write_config, lab_base, text: str, where: str, hint: str
) -> None:
    # a valid [lab] first (it is checked first); "[lab]\n..." cases continue that table
    text = toml_text({"lab": lab_base}) + text.removeprefix("[lab]\n")
    message = load_error(write_config(text))
    assert f": {where}: unknown" in message
    assert f"did you mean {hint!r}" in message


def test_unknown_key_without_close_match_lists_known_keys(write_config) -> None:
    message = load_error(write_config("[lab]\nzzzzzz = 1\n"))
    assert "did you mean" not in message
    assert "port" in message and "notebook_dir" in message


def test_unknown_top_level_key(write_config) -> None:
    message = load_error(write_config("port = 8888\n"))
    assert ": port: unknown section" in message


def test_section_that_is_not_a_table(write_config) -> None:
    message = load_error(write_config("lab = 3\n"))
    assert "lab" in message and "table" in message


# --- wrong types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("port", "8888", "expected an integer, got a string"),
        ("port", 8888.0, "expected an integer, got a float"),
        ("port", True, "expected an integer, got a boolean"),
        ("allow_root", "yes", "expected a boolean, got a string"),
        ("allow_root", 1, "expected a boolean, got an integer"),
        ("command", "jupyter-lab", "expected a list, got a string"),
        ("user", 0, "expected a string, got an integer"),
        ("notebook_dir", ["/tmp"], "expected a string, got a list"),
        ("ip", 127, "expected a string, got an integer"),
        ("env", "A=B", "expected a table, got a string"),
        ("options", ["x"], "expected a table, got a list"),
        ("umask", 77, "expected a string, got an integer"),
    ],
)
def test_wrong_types(write_config, lab_base, key: str, value: object, expected: str) -> None:
    message = lab_error(write_config, lab_base, **{key: value})
    assert f"[lab] {key}: {expected}" in message


def test_wrong_type_shows_the_value(write_config, lab_base) -> None:
    assert '"8888"' in lab_error(write_config, lab_base, port="8888")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[restart]\ninitial_delay = '1'\n", "[restart] initial_delay"),
        ("[restart]\nmax_failures = 2.5\n", "[restart] max_failures"),
        ("[health]\ninterval = true\n", "[health] interval"),
        ("[health]\nfailures = '3'\n", "[health] failures"),
        ("[log]\nlevel = 3\n", "[log] level"),
        ("[service]\nstate_dir = 1\n", "[service] state_dir"),
    ],
)
def test_wrong_types_in_other_sections(write_config, lab_base, text: str, where: str) -> None:
    message = load_error(write_config(toml_text({"lab": lab_base}) + text))
    assert f": {where}: expected" in message


def test_date_value_is_rejected(write_config, lab_base) -> None:
    message = load_error(write_config(toml_text({"lab": lab_base}) + "port = 1979-05-27\n"))
    assert "[lab] port: expected an integer" in message


# --- values out of range or invalid ----------------------------------------------------


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_port_out_of_range(write_config, lab_base, port: int) -> None:
    message = lab_error(write_config, lab_base, port=port)
    assert f"[lab] port: {port} is not a port" in message


@pytest.mark.parametrize("port", [1, 8888, 65535])
def test_port_in_range(write_config, lab_base, tmp_path: Path, port: int) -> None:
    assert load_lab(write_config, lab_base, tmp_path, port=port).lab.port == port


def test_unknown_user(write_config, lab_base) -> None:
    message = lab_error(write_config, lab_base, user="no-such-user-jls")
    assert "[lab] user: no such user 'no-such-user-jls'" in message


def test_notebook_dir_missing(write_config, lab_base, tmp_path: Path) -> None:
    message = lab_error(write_config, lab_base, notebook_dir=str(tmp_path / "absent"))
    assert "[lab] notebook_dir:" in message and "does not exist" in message


def test_notebook_dir_is_a_file(write_config, lab_base, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    message = lab_error(write_config, lab_base, notebook_dir=str(tmp_path / "file"))
    assert "[lab] notebook_dir:" in message and "not a directory" in message


@pytest.mark.parametrize("relative", ["notebooks", "./notebooks", "../x", ""])
def test_notebook_dir_relative(write_config, lab_base, relative: str) -> None:
    message = lab_error(write_config, lab_base, notebook_dir=relative)
    assert "[lab] notebook_dir:" in message and "absolute" in message


@pytest.mark.parametrize("ip", ["localhost", "300.1.1.1", "1.2.3", "", "::g", "127.0.0.1:8888"])
def test_invalid_ip(write_config, lab_base, ip: str) -> None:
    message = lab_error(write_config, lab_base, ip=ip)
    assert "[lab] ip:" in message and "not an IP address" in message


@pytest.mark.parametrize(
    ("ip", "normal"),
    [("0.0.0.0", "0.0.0.0"), ("::1", "::1"), ("[::1]", "::1"), ("::0:1", "::1")],
)
def test_valid_ip_is_normalised(write_config, lab_base, tmp_path, ip: str, normal: str) -> None:
    assert load_lab(write_config, lab_base, tmp_path, ip=ip).lab.ip == normal


@pytest.mark.parametrize("umask", ["999", "abc", "", "-1", "01000", "0o1000"])
def test_bad_umask(write_config, lab_base, umask: str) -> None:
    assert "[lab] umask:" in lab_error(write_config, lab_base, umask=umask)


@pytest.mark.parametrize(("umask", "value"), [("0077", 0o077), ("022", 0o022), ("0", 0)])
def test_umask_is_octal(write_config, lab_base, tmp_path, umask: str, value: int) -> None:
    assert load_lab(write_config, lab_base, tmp_path, umask=umask).lab.umask == value


@pytest.mark.parametrize(
    "base_url", ["/a b/", "/x?y", "/x#y", "/50%", "/a\tb", "/日本/", "/a\x0bb"]
)
def test_bad_base_url(write_config, lab_base, base_url: str) -> None:
    assert "[lab] base_url:" in lab_error(write_config, lab_base, base_url=base_url)


@pytest.mark.parametrize(
    "option",
    [
        "ServerApp.port",
        "ServerApp.ip",
        "ServerApp.port_retries",
        "ServerApp.base_url",
        "ServerApp.root_dir",
        "ServerApp.token",
        "IdentityProvider.token",
        "ServerApp.cookie_secret",
        "ServerApp.runtime_dir",
        "ServerApp.open_browser",
    ],
)
def test_reserved_options(write_config, lab_base, option: str) -> None:
    message = lab_error(write_config, lab_base, options={option: "1"})
    assert f'[lab] options."{option}": is managed by jlservice' in message


@pytest.mark.parametrize("option", ["port", "ServerApp", "1a.b", "ServerApp.", "Server App.x"])
def test_option_names_must_be_traitlets(write_config, lab_base, option: str) -> None:
    message = lab_error(write_config, lab_base, options={option: "1"})
    assert "[lab] options." in message and "traitlet" in message


def test_nested_tables_in_options(write_config, lab_base) -> None:
    text = toml_text({"lab": lab_base}) + (
        '[lab.options."ServerApp.terminado_settings".env]\n"TERM" = "xterm"\n'
    )
    message = load_error(write_config(text))
    assert '[lab] options."ServerApp.terminado_settings":' in message
    assert "nesting" in message


def test_list_of_tables_in_options(write_config, lab_base) -> None:
    message = lab_error(write_config, lab_base, options={"ServerApp.x": [{"a": 1}]})
    assert '[lab] options."ServerApp.x":' in message


@pytest.mark.parametrize(
    "name", ["JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "JUPYTER_RUNTIME_DIR", "JUPYTER_NO_CONFIG"]
)
def test_reserved_env(write_config, lab_base, name: str) -> None:
    message = lab_error(write_config, lab_base, env={name: "x"})
    assert f"[lab] env.{name}: is jlservice's" in message


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "A=B", "", "É"])
def test_invalid_env_names(write_config, lab_base, name: str) -> None:
    message = lab_error(write_config, lab_base, env={name: "x"})
    assert "[lab] env." in message and "not a valid environment variable name" in message


def test_env_values_must_be_strings(write_config, lab_base) -> None:
    message = lab_error(write_config, lab_base, env={"OMP_NUM_THREADS": 4})
    assert "[lab] env.OMP_NUM_THREADS: expected a string, got an integer" in message


def test_command_not_executable(write_config, lab_base, tmp_path: Path) -> None:
    program = tmp_path / "jupyter-lab"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o644)
    message = lab_error(write_config, lab_base, command=[str(program)])
    assert f"[lab] command: user {ME} cannot execute {program}" in message


def test_command_missing(write_config, lab_base, tmp_path: Path) -> None:
    message = lab_error(write_config, lab_base, command=[str(tmp_path / "nope")])
    assert "[lab] command:" in message and "does not exist" in message


def test_command_not_on_path(write_config, lab_base) -> None:
    message = lab_error(write_config, lab_base, command=["no-such-jupyter-lab-jls"])
    assert "[lab] command: 'no-such-jupyter-lab-jls' is not on PATH" in message


@pytest.mark.parametrize("command", [[], [""], ["/bin/sh", ""], ["/bin/sh", 1]])
def test_command_must_be_non_empty_strings(write_config, lab_base, command: list) -> None:
    assert "[lab] command: expected a non-empty list" in lab_error(
        write_config, lab_base, command=command
    )


def test_command_found_on_path_is_made_absolute(write_config, lab_base, tmp_path) -> None:
    cfg = load_lab(write_config, lab_base, tmp_path, command=["sh", "-c", "true"])
    assert Path(cfg.lab.command[0]).is_absolute()
    assert cfg.lab.command[1:] == ("-c", "true")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[restart]\ninitial_delay = -1\n", "[restart] initial_delay"),
        ("[restart]\nmax_failures = 0\n", "[restart] max_failures"),
        ("[restart]\nstart_timeout = 0.5\n", "[restart] start_timeout"),
        ("[restart]\ninitial_delay = 10\nmax_delay = 5\n", "[restart] max_delay"),
        ("[health]\ninterval = 0\n", "[health] interval"),
        ("[health]\ntimeout = nan\n", "[health] timeout"),
        ("[health]\ntimeout = inf\n", "[health] timeout"),
        ("[health]\nfailures = 1001\n", "[health] failures"),
        ("[reload]\nwhen = 'later'\n", "[reload] when"),
        ("[reload]\nwatch = 'yes'\n", "[reload] watch"),
        ("[reload]\nmax_wait = -1\n", "[reload] max_wait"),
        ("[log]\nlevel = 'verbose'\n", "[log] level"),
        ("[log]\nformat = 'xml'\n", "[log] format"),
        ("[service]\nstate_dir = 'relative/dir'\n", "[service] state_dir"),
        ("[service]\nruntime_dir = 'run'\n", "[service] runtime_dir"),
    ],
)
def test_bad_values_in_other_sections(write_config, lab_base, text: str, where: str) -> None:
    message = load_error(write_config(toml_text({"lab": lab_base}) + text))
    assert f": {where}: " in message


def test_state_dir_that_is_a_file(write_config, lab_base, tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    text = toml_text({"lab": lab_base, "service": {"state_dir": str(tmp_path / "state")}})
    message = load_error(write_config(text))
    assert "[service] state_dir:" in message and "not a directory" in message


def test_log_level_is_case_insensitive(write_config, lab_base, tmp_path: Path) -> None:
    path = write_config(toml_text({"lab": lab_base, "log": {"level": "DEBUG"}}))
    assert config.load(path, environ={}, cwd=tmp_path).log.level == "debug"


# --- users -----------------------------------------------------------------------------


@needs_root
def test_root_needs_allow_root(write_config, tmp_path: Path) -> None:
    message = load_error(write_config(toml_text({"lab": {"notebook_dir": str(tmp_path)}})))
    assert "[lab] user:" in message and "allow_root" in message


@needs_root
def test_explicit_root_user_needs_allow_root(write_config, tmp_path: Path) -> None:
    text = toml_text({"lab": {"user": "root", "notebook_dir": str(tmp_path)}})
    assert "allow_root" in load_error(write_config(text))


@needs_root
def test_built_in_defaults_as_root_need_allow_root(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load(None, environ={}, cwd=tmp_path)
    message = str(info.value)
    assert_one_line(message, "built-in defaults")
    assert "allow_root" in message


@needs_root
def test_root_may_run_lab_as_another_user(write_config, tmp_path: Path) -> None:
    text = toml_text({"lab": {"user": "nobody", "notebook_dir": str(tmp_path)}})
    cfg = config.load(write_config(text), environ={}, cwd=tmp_path)
    assert cfg.lab.user == "nobody"
    assert cfg.account.uid == pwd.getpwnam("nobody").pw_uid


@needs_root
def test_other_users_default_notebook_dir_is_their_home(
    write_config, tmp_path: Path, other_user
) -> None:
    path = write_config(toml_text({"lab": {"user": other_user.name}}))
    assert config.load(path, environ={}, cwd=tmp_path).lab.notebook_dir == Path(other_user.home)


@needs_root
def test_a_default_notebook_dir_that_does_not_exist_is_named(write_config, tmp_path) -> None:
    home = pwd.getpwnam("nobody").pw_dir
    assert not Path(home).exists()  # Debian's /nonexistent
    path = write_config(toml_text({"lab": {"user": "nobody"}}))
    assert f"[lab] notebook_dir: {home} does not exist" in load_error(path)


def test_unprivileged_supervisor_cannot_switch_user(write_config, tmp_path, monkeypatch) -> None:
    nobody = users.lookup("nobody")
    assert nobody is not None
    monkeypatch.setattr(users, "current", lambda: nobody)
    text = toml_text({"lab": {"user": "root", "notebook_dir": str(tmp_path)}})
    message = load_error(write_config(text))
    assert "[lab] user:" in message and "not root" in message


def test_tilde_notebook_dir_is_the_users_home(write_config, lab_base, tmp_path: Path) -> None:
    cfg = load_lab(write_config, lab_base, tmp_path, notebook_dir="~")
    assert cfg.lab.notebook_dir == Path(pwd.getpwuid(os.geteuid()).pw_dir)


# --- defaults --------------------------------------------------------------------------


def test_defaults(write_config, lab_base, tmp_path: Path) -> None:
    table = {k: v for k, v in lab_base.items() if k != "notebook_dir"}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cfg = config.load(write_config(toml_text({"lab": table})), environ={}, cwd=cwd)
    assert cfg.lab.user == ME
    assert cfg.lab.notebook_dir == cwd
    assert cfg.lab.ip == "127.0.0.1"
    assert cfg.lab.port == 8888
    assert cfg.lab.base_url == "/"
    assert cfg.lab.umask == 0o077
    assert cfg.lab.command == (str(Path(sys.executable).parent / "jupyter-lab"),)
    assert cfg.lab.env == {} and cfg.lab.options == {}
    assert cfg.restart == config.RestartConfig()
    assert cfg.restart.max_delay >= cfg.restart.initial_delay > 0
    assert (cfg.log.level, cfg.log.format) == ("info", "console")


def test_built_in_defaults_serve_the_current_user_and_directory(open_dir: Path) -> None:
    """Without any file: the user running jlservice, its current directory, 127.0.0.1:8888.

    Root is refused by those defaults (JupyterLab as root), so as root the check runs as an
    unprivileged account, the way a user would run it.
    """
    code = (
        "from jlservice import config; c = config.load(None, environ={}); "
        "print(c.path, c.lab.user, c.lab.notebook_dir, c.lab.ip, c.lab.port)"
    )
    as_user = {"user": "nobody"} if IS_ROOT else {}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=open_dir,
        capture_output=True,
        text=True,
        timeout=60,
        **as_user,
    )
    assert result.returncode == 0, result.stderr
    user = "nobody" if IS_ROOT else ME
    assert result.stdout.split() == ["None", user, str(open_dir), "127.0.0.1", "8888"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("jupyter", "/jupyter/"),
        ("/jupyter", "/jupyter/"),
        ("jupyter/", "/jupyter/"),
        ("/jupyter/", "/jupyter/"),
        ("//", "/"),
        ("", "/"),
        ("/a/b", "/a/b/"),
    ],
)
def test_base_url_normalised(write_config, lab_base, tmp_path, given: str, expected: str) -> None:
    assert load_lab(write_config, lab_base, tmp_path, base_url=given).lab.base_url == expected


def test_path_is_recorded(write_config, lab_base, tmp_path: Path) -> None:
    path = write_config(toml_text({"lab": lab_base}))
    assert config.load(path, environ={}, cwd=tmp_path).path == path


def _service(environ: dict[str, str], text: str | None, tmp_path: Path) -> config.ServiceConfig:
    path = None
    if text is not None:
        path = tmp_path / "jlservice.toml"
        path.write_text(text)
    return config.load_service(path, environ=environ)


def test_state_directory_from_systemd_comes_first(tmp_path: Path) -> None:
    environ = {"STATE_DIRECTORY": "/srv/a:/srv/b", "XDG_STATE_HOME": "/xdg"}
    assert _service(environ, None, tmp_path).state_dir == Path("/srv/a")


def test_runtime_directory_from_systemd_comes_first(tmp_path: Path) -> None:
    environ = {"RUNTIME_DIRECTORY": "/run/a:/run/b", "XDG_RUNTIME_DIR": "/xdg"}
    assert _service(environ, None, tmp_path).runtime_dir == Path("/run/a")


def test_state_dir_in_file_beats_environment(tmp_path: Path) -> None:
    text = f'[service]\nstate_dir = "{tmp_path}/s"\n'
    service = _service({"STATE_DIRECTORY": "/srv/a"}, text, tmp_path)
    assert service.state_dir == tmp_path / "s"


@needs_root
def test_root_state_dir_default(tmp_path: Path) -> None:
    service = _service({"XDG_STATE_HOME": "/xdg", "XDG_RUNTIME_DIR": "/xdgrun"}, None, tmp_path)
    assert service.state_dir == Path("/var/lib/jlservice")
    assert service.runtime_dir == Path("/run/jlservice")


def _service_as_unprivileged(environ: dict[str, str], cwd: Path) -> list[str]:
    """[service] defaults as an unprivileged account sees them (as root: really as nobody)."""
    code = (
        "import sys, json; from jlservice import config; "
        "s = config.load_service(None, environ=json.loads(sys.argv[1])); "
        "print(s.state_dir, s.runtime_dir)"
    )
    as_user = {"user": "nobody"} if IS_ROOT else {}
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(environ)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        **as_user,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_unprivileged_state_dir_follows_xdg(open_dir: Path) -> None:
    environ = {"XDG_STATE_HOME": "/xdg/state", "XDG_RUNTIME_DIR": "/xdg/run"}
    assert _service_as_unprivileged(environ, open_dir) == [
        "/xdg/state/jlservice",
        "/xdg/run/jlservice",
    ]


def test_unprivileged_state_dir_without_xdg(open_dir: Path) -> None:
    home = pwd.getpwnam("nobody").pw_dir if IS_ROOT else str(Path.home())
    state_dir = f"{home}/.local/state/jlservice"
    assert _service_as_unprivileged({}, open_dir) == [state_dir, f"{state_dir}/run"]


def test_load_service_ignores_a_broken_lab_section(tmp_path: Path) -> None:
    text = (
        '[lab]\nport = "eighty"\nprot = 1\nuser = "no-such-user-jls"\n'
        f'[service]\nstate_dir = "{tmp_path}/state"\n[unknown]\nx = 1\n'
    )
    assert _service({}, text, tmp_path).state_dir == tmp_path / "state"


def test_load_service_still_checks_service(tmp_path: Path) -> None:
    path = tmp_path / "jlservice.toml"
    path.write_text("[service]\nstate_dr = '/x'\n")
    with pytest.raises(config.ConfigError) as info:
        config.load_service(path, environ={})
    assert_one_line(str(info.value), str(path))
    assert "did you mean 'state_dir'" in str(info.value)


def test_load_service_reports_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "jlservice.toml"
    path.write_text("[service\n")
    with pytest.raises(config.ConfigError, match="invalid TOML"):
        config.load_service(path, environ={})


# --- locate ----------------------------------------------------------------------------


def test_locate_command_line_first() -> None:
    assert config.locate("/a.toml", {"JLSERVICE_CONFIG": "/b.toml"}) == Path("/a.toml")


def test_locate_environment_second() -> None:
    assert config.locate(None, {"JLSERVICE_CONFIG": "/b.toml"}) == Path("/b.toml")
    assert config.locate("", {"JLSERVICE_CONFIG": "/b.toml"}) == Path("/b.toml")


def test_locate_system_file_only_if_present(tmp_path: Path, monkeypatch) -> None:
    system = tmp_path / "etc-jlservice.toml"
    monkeypatch.setattr(config.service, "DEFAULT_PATH", system)
    assert config.locate(None, {}) is None
    assert config.locate(None, {"JLSERVICE_CONFIG": ""}) is None
    system.write_text("")
    assert config.locate(None, {}) == system
    assert config.locate(None, {"JLSERVICE_CONFIG": "/b.toml"}) == Path("/b.toml")


def test_locate_default_path_is_etc() -> None:
    # Whether locate() returns it: test_locate_system_file_only_if_present.
    assert Path("/etc/jlservice/jlservice.toml") == config.DEFAULT_PATH


# --- render ----------------------------------------------------------------------------


def _rich_doc(lab_base: dict, tmp_path: Path) -> dict:
    return {
        "lab": {
            **lab_base,
            "ip": "::1",
            "port": 9999,
            "base_url": "jupyter",
            "command": ["/bin/sh", "-c", 'echo "$0"'],
            "umask": "0022",
            "env": {"LANG": "C.UTF-8", "QUOTED": 'say "hi" \\ bye', "UNICODE": "é€😀"},
            "options": {
                "ServerApp.allow_origin": "*",
                "ServerApp.max_body_size": 1048576,
                "ServerApp.shutdown_no_activity_timeout": 0.5,
                "ServerApp.terminals_enabled": False,
                "ServerApp.jpserver_extensions": {"a.b": True, "c": False},
                "ServerApp.allow_origin_pat": ["x", "y"],
                "KernelManager.cull_idle_timeout": 3600,
            },
        },
        "service": {"state_dir": str(tmp_path / "s"), "runtime_dir": str(tmp_path / "r")},
        "restart": {"initial_delay": 1, "max_delay": 60.0, "max_failures": 7},
        "health": {"interval": 0.25, "timeout": 1e-1, "failures": 10},
        "log": {"level": "warning", "format": "json"},
    }


def _reparse(cfg: config.Config, tmp_path: Path) -> config.Config:
    doc = tomllib.loads(config.render(cfg))
    return config.parse(doc, "rendered", None, {}, tmp_path)


def test_render_round_trips(lab_base, tmp_path: Path) -> None:
    cfg = config.parse(_rich_doc(lab_base, tmp_path), "x.toml", None, {}, tmp_path)
    again = _reparse(cfg, tmp_path)
    assert again.lab == cfg.lab
    assert (again.service, again.restart, again.health, again.log) == (
        cfg.service,
        cfg.restart,
        cfg.health,
        cfg.log,
    )


def test_render_values(lab_base, tmp_path: Path) -> None:
    cfg = config.parse(_rich_doc(lab_base, tmp_path), "x.toml", None, {}, tmp_path)
    doc = tomllib.loads(config.render(cfg))
    assert doc["lab"]["port"] == 9999
    assert doc["lab"]["base_url"] == "/jupyter/"
    assert doc["lab"]["umask"] == "0022"
    assert doc["lab"]["env"]["QUOTED"] == 'say "hi" \\ bye'
    assert doc["lab"]["options"]["ServerApp.jpserver_extensions"] == {"a.b": True, "c": False}
    assert doc["restart"]["max_failures"] == 7
    assert doc["log"] == {"level": "warning", "format": "json"}


def test_render_defaults_round_trip(lab_base, tmp_path: Path) -> None:
    cfg = config.parse({"lab": lab_base}, "x.toml", None, {}, tmp_path)
    assert _reparse(cfg, tmp_path).lab == cfg.lab


def test_render_names_the_source(write_config, lab_base, tmp_path: Path) -> None:
    path = write_config(toml_text({"lab": lab_base}))
    assert str(path) in config.render(config.load(path, environ={}, cwd=tmp_path))


@pytest.mark.parametrize("value", ["tab\there", "new\nline", "bell\x07", "del\x7f", "esc\x1b[0m"])
def test_render_control_characters_round_trip(lab_base, tmp_path: Path, value: str) -> None:
    """Env values can hold any character TOML can escape; render must escape them too."""
    cfg = config.parse({"lab": {**lab_base, "env": {"V": value}}}, "x", None, {}, tmp_path)
    assert _reparse(cfg, tmp_path).lab.env == {"V": value}


# --- characters that cannot reach a terminal line or an exec() -------------------------


@pytest.mark.parametrize(
    "lab",
    [
        {"po\nrt": 1},
        {"env": {"A\nB": "x"}},
        {"options": {"Server\nApp.x": 1}},
        {"notebook_dir": "/no/such\ndir"},
        {"command": ["/no/such\njupyter-lab"]},
    ],
    ids=["key", "env-name", "option-name", "notebook_dir", "command"],
)
def test_newlines_in_names_and_values_keep_the_error_on_one_line(
    write_config, lab_base, lab: dict
) -> None:
    lab_error(write_config, lab_base, **lab)


def test_newline_in_a_section_name_keeps_the_error_on_one_line(write_config) -> None:
    load_error(write_config('["la\\nb"]\n'))


@pytest.mark.parametrize(
    "lab",
    [{"options": {"ServerApp.x\n": 1}}, {"env": {"FOO\n": "x"}}, {"options": {"ServerApp.é": 1}}],
    ids=["option", "env", "non-ascii-option"],
)
def test_names_with_a_trailing_newline_are_rejected(write_config, lab_base, lab: dict) -> None:
    """A regex `$` matches before a final newline; the names must still be refused."""
    path = write_config(toml_text({"lab": {**lab_base, **lab}}))
    with pytest.raises(config.ConfigError):
        config.load(path, environ={}, cwd=path.parent)


def test_nul_in_user_is_a_config_error(write_config, lab_base) -> None:
    message = lab_error(write_config, lab_base, user="ro\x00ot")
    assert "[lab] user:" in message


@pytest.mark.parametrize(
    "lab",
    [
        {"env": {"V": "a\x00b"}},
        {"options": {"ServerApp.allow_origin": "a\x00b"}},
        {"command": ["/bin/sh", "-c", "a\x00b"]},
    ],
    ids=["env-value", "option-value", "command-argument"],
)
def test_nul_that_exec_cannot_pass_is_a_config_error(write_config, lab_base, lab: dict) -> None:
    """execve() cannot carry NUL; accepting it means a crash at start-up instead."""
    lab_error(write_config, lab_base, **lab)


def test_command_with_a_looping_interpreter(write_config, lab_base, tmp_path: Path) -> None:
    """A broken venv whose python is a symlink loop: a ConfigError, not a RuntimeError."""
    loop = tmp_path / "python3"
    loop.symlink_to(loop)
    program = tmp_path / "jupyter-lab"
    program.write_text(f"#!{loop}\n")
    program.chmod(0o755)
    message = lab_error(write_config, lab_base, command=[str(program)])
    assert "[lab] command:" in message


@pytest.mark.parametrize(
    "key",
    [
        "PasswordIdentityProvider.token",
        "IdentityProvider.cookie_name",
        "JupyterApp.runtime_dir",
        "LabApp.port",
        "ServerApp.root_dir",
        # traitlets applies a class's settings to its subclasses: so to ServerApp from these
        "Configurable.ip",
        "LoggingConfigurable.allow_remote_access",
        "Application.disable_check_xsrf",
        # and a name that is managed is refused whatever class it names
        "KernelManager.ip",
        "AnyClassAtAll.login_handler_class",
    ],
)
def test_managed_traits_are_refused_on_any_class(lab_base, tmp_path, key):
    with pytest.raises(config.ConfigError, match="is managed by jlservice"):
        config.parse({"lab": {**lab_base, "options": {key: "x"}}}, "x", None, {}, tmp_path)


@pytest.mark.parametrize(
    "key", ["ServerApp.kernel_manager_class", "SessionManager.database_filepath"]
)
def test_the_kernel_manager_is_the_users_only_without_survive_restarts(lab_base, tmp_path, key):
    doc = {"lab": {**lab_base, "options": {key: "x"}}}
    with pytest.raises(config.ConfigError, match="while \\[kernels\\] survive_restarts = true"):
        config.parse(doc, "x", None, {}, tmp_path)
    command = {**lab_base, "command": ["/bin/sh", "-c", f"exec jupyter-lab --{key}=x"]}
    with pytest.raises(config.ConfigError, match=f"'--{key}' sets"):
        config.parse({"lab": command}, "x", None, {}, tmp_path)
    cfg = config.parse({**doc, "kernels": {"survive_restarts": False}}, "x", None, {}, tmp_path)
    assert f"--{key}=x" in launcher.build(cfg).argv


def test_other_traits_pass(lab_base, tmp_path):
    options = {"KernelManager.shutdown_wait_time": 3, "ServerApp.client_ca": "/etc/ca.pem"}
    cfg = config.parse({"lab": {**lab_base, "options": options}}, "x", None, {}, tmp_path)
    assert dict(cfg.lab.options) == options


@pytest.mark.parametrize(
    ("word", "trait"),
    [
        ("--ServerApp.token=", "token"),
        ("-ServerApp.token=x", "token"),  # traitlets takes one dash too
        ("--ServerApp.token", "token"),  # the value in the next word
        ("--NotebookApp.password=x", "password"),
        ("--Application.port-retries=3", "port_retries"),
        ("--ip=0.0.0.0", "ip"),
        ("--ip", "ip"),
        ("--allow-r", "allow_root"),  # argparse takes an unambiguous prefix
        ("--allow_root", "allow_root"),
        ("--notebook-dir=/", "root_dir"),
        ("--config=/tmp/c.py", "config_file"),
        ("--cert=/x", "certfile"),
        ("--no-browser", None),
        ("--collaborative", None),
        ("-y", None),
        ("-c", None),  # sh -c
        ("--", None),
        ("lab", None),
        ("ip=0.0.0.0", None),
        ("--KernelManager.shutdown_wait_time=3", None),
    ],
)
def test_reserved_arguments(word: str, trait: str | None) -> None:
    from jlservice.config.lab import reserved_argument

    assert reserved_argument(word) == trait


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--ServerApp.token=secret"], "'--ServerApp.token=…' sets token"),
        (["--ip", "0.0.0.0"], "'--ip' sets ip"),
        (["-c", 'exec jupyter-lab --IdentityProvider.token= "$@"'], "sets token"),
    ],
)
def test_managed_settings_in_the_command_are_refused(
    write_config, lab_base, args: list[str], shown: str
) -> None:
    message = lab_error(write_config, lab_base, command=["/bin/sh", *args])
    assert "[lab] command: " in message and shown in message
    assert "which is managed by jlservice; use " in message
    assert "secret" not in message  # a value there may be a credential: never echoed


@pytest.mark.skipif(not IS_ROOT, reason="running as a uid with no passwd entry needs root")
def test_a_uid_without_passwd_entry_gets_defaults(open_dir: Path) -> None:
    """Containers often run as a bare uid (docker --user 54321): no traceback, sane defaults."""
    code = (
        "from jlservice import config; c = config.load(None); "
        "print(c.lab.user, c.lab.notebook_dir, c.service.state_dir)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=open_dir,
        capture_output=True,
        text=True,
        timeout=60,
        user=54321,
        env={"HOME": str(open_dir)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["54321", str(open_dir), f"{open_dir}/.local/state/jlservice"]
