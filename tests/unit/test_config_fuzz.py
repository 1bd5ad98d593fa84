"""Fuzzing config: whatever the file holds, the only failure is a one-line ConfigError."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

from jlservice import config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IS_ROOT = os.geteuid() == 0
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CWD = Path("/tmp")  # exists everywhere; the default notebook_dir when [lab] names none
JUPYTER_LAB = str(Path(sys.executable).parent / "jupyter-lab")
ME = pwd.getpwuid(os.geteuid()).pw_name

KNOWN_KEYS = {
    "lab": [
        "user",
        "notebook_dir",
        "ip",
        "port",
        "base_url",
        "command",
        "env",
        "options",
        "allow_root",
        "umask",
    ],
    "service": ["state_dir", "runtime_dir"],
    "restart": [
        "initial_delay",
        "max_delay",
        "reset_after",
        "max_failures",
        "start_timeout",
        "stop_timeout",
    ],
    "health": ["interval", "timeout", "failures"],
    "reload": ["watch", "when", "max_wait"],
    "log": ["level", "format"],
}
ALL_KEYS = sorted({k for keys in KNOWN_KEYS.values() for k in keys})

# --- strategies --------------------------------------------------------------------------

# Characters that have broken parsers, terminals and exec() before, mixed into all text.
SPECIAL = "\x00\n\r\t\x7f\x1b\"\\'=.~/ é\u2028"
texts = st.one_of(
    st.text(max_size=16),
    st.text(alphabet=SPECIAL + "aZ_9", max_size=12),
    st.lists(st.sampled_from(SPECIAL) | st.text(max_size=3), max_size=4).map("".join),
)
scalars = st.one_of(
    texts,
    st.integers(),
    st.floats(),
    st.booleans(),
    st.dates(),
    st.times(),
    st.datetimes(),
)
keys = st.one_of(
    st.sampled_from([*ALL_KEYS, "ServerApp.port", "ServerApp.allow_origin", "A", "PATH"]),
    texts,
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
env_names = st.one_of(
    st.sampled_from(["PATH", "LANG", "JUPYTER_TOKEN", "OMP_NUM_THREADS", "1X"]),
    st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True),
    texts,
)
option_names = st.one_of(
    st.sampled_from(
        [
            "ServerApp.port",
            "ServerApp.token",
            "ServerApp.allow_origin",
            "KernelManager.cull_idle_timeout",
            "ServerApp.jpserver_extensions",
        ]
    ),
    st.from_regex(r"[A-Za-z_]\w{0,6}(\.[A-Za-z_]\w{0,6}){1,2}", fullmatch=True),
    texts,
)
option_scalars = st.one_of(texts, st.integers(), st.floats(), st.booleans())
option_values = st.one_of(
    option_scalars,
    st.lists(option_scalars, max_size=3),
    st.dictionaries(texts, option_scalars, max_size=3),
)
seconds = st.one_of(st.integers(0, 3600), st.floats(0.1, 86400))
counts = st.integers(1, 1000)

# Documents that mostly pass: every key optional, every value of the right type (and
# free text wherever the file may hold free text), so that fuzzing reaches render().
VALID = {
    "lab": {
        "user": st.sampled_from(["root", "nobody"] if IS_ROOT else [ME]) | texts,
        "notebook_dir": st.sampled_from(["/tmp", "/", "~"]),
        "ip": st.sampled_from(["127.0.0.1", "::1", "[::1]", "0.0.0.0", "::"]),
        "port": st.integers(1, 65535),
        "base_url": texts,
        "command": st.builds(
            lambda program, args: [program, *args],
            st.sampled_from([JUPYTER_LAB, "/bin/sh", "sh"]),
            st.lists(texts.filter(bool), max_size=3),
        ),
        "env": st.dictionaries(env_names, texts, max_size=3),
        "options": st.dictionaries(option_names, option_values, max_size=3),
        "umask": st.sampled_from(["0077", "022", "0", "777", "0o22"]),
    },
    "service": {
        "state_dir": st.builds(lambda t: "/nonexistent-jls/" + t, texts),
        "runtime_dir": st.builds(lambda t: "/nonexistent-jls/" + t, texts),
    },
    "restart": {
        "initial_delay": seconds,
        "max_delay": seconds,
        "reset_after": seconds,
        "max_failures": counts,
        "start_timeout": seconds,
        "stop_timeout": seconds,
    },
    "health": {"interval": seconds, "timeout": seconds, "failures": counts},
    "reload": {
        "watch": st.booleans(),
        "when": st.sampled_from(["immediate", "idle"]),
        "max_wait": seconds,
    },
    "log": {
        "level": st.sampled_from(["debug", "INFO", "Warning", "error"]),
        "format": st.sampled_from(["console", "json"]),
    },
}
REQUIRED = {"lab": {"allow_root": st.just(True)}} if IS_ROOT else {}

valid_sections = {
    name: st.fixed_dictionaries(REQUIRED.get(name, {}), optional=fields)
    for name, fields in VALID.items()
}
valid_documents = st.fixed_dictionaries(
    {"lab": valid_sections["lab"]},
    optional={name: s for name, s in valid_sections.items() if name != "lab"},
)
# A few keys of a section replaced by anything at all, or a section replaced whole.
section_names = st.one_of(st.sampled_from(sorted(KNOWN_KEYS)), texts)
mutations = st.dictionaries(
    section_names,
    st.one_of(st.dictionaries(keys, anything, max_size=2), anything),
    max_size=2,
)


def mutate(doc: dict, changes: dict) -> dict:
    doc = dict(doc)
    for name, change in changes.items():
        if isinstance(change, dict) and isinstance(doc.get(name), dict):
            doc[name] = {**doc[name], **change}
        else:
            doc[name] = change
    return doc


documents = st.one_of(
    valid_documents,
    st.builds(mutate, valid_documents, mutations),
    st.builds(mutate, valid_documents, mutations),
    st.dictionaries(section_names, anything, max_size=3),
)


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


toml_values = st.one_of(
    st.sampled_from(['"x"', "8888", "true", "[]", "{}", "1.5", "nan", "1979-05-27", "'/tmp'"]),
    st.builds(toml_string, texts),
    st.integers().map(str),
    texts,
)
toml_lines = st.one_of(
    st.sampled_from([f"[{s}]" for s in KNOWN_KEYS] + ["[lab.env]", "[lab.options]", "[[lab]]"]),
    st.builds(
        lambda k, v: f"{k} = {v}",
        st.sampled_from(ALL_KEYS) | st.builds(toml_string, texts),
        toml_values,
    ),
    st.text(max_size=20),
)
toml_texts = st.lists(toml_lines, max_size=8).map("\n".join)


# --- helpers -----------------------------------------------------------------------------


def parse(doc: dict) -> config.Config | None:
    """parse(); None when it raised ConfigError (anything else propagates and fails)."""
    try:
        return config.parse(doc, "fuzz.toml", None, {}, CWD)
    except config.ConfigError:
        return None


def error_of(call) -> str | None:
    try:
        call()
    except config.ConfigError as exc:
        return str(exc)
    return None


def assert_one_line(message: str, source: str) -> None:
    assert "\n" not in message and "\r" not in message, repr(message)
    assert message.startswith(f"{source}: "), message


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "jlservice.toml"


# --- loading files -----------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=300))
def test_load_arbitrary_bytes(fuzz_file: Path, raw: bytes) -> None:
    fuzz_file.write_bytes(raw)
    message = error_of(lambda: config.load(fuzz_file, environ={}, cwd=CWD))
    if message is not None:
        assert_one_line(message, str(fuzz_file))


@FUZZ
@given(text=st.text(max_size=300))
def test_load_arbitrary_text(fuzz_file: Path, text: str) -> None:
    fuzz_file.write_text(text, encoding="utf-8")
    message = error_of(lambda: config.load(fuzz_file, environ={}, cwd=CWD))
    if message is not None:
        assert_one_line(message, str(fuzz_file))


@FUZZ
@given(text=toml_texts)
def test_load_toml_like_text(fuzz_file: Path, text: str) -> None:
    fuzz_file.write_text(text, encoding="utf-8")
    error_of(lambda: config.load(fuzz_file, environ={}, cwd=CWD))
    error_of(lambda: config.load_service(fuzz_file, environ={}))


# --- parsing documents -------------------------------------------------------------------


ROOT_OK = {"allow_root": True} if IS_ROOT else {}


@FUZZ
@given(doc=documents)
@example(doc={"lab": {**ROOT_OK, "user": "ro\x00ot"}})
@example(doc={"lab": {**ROOT_OK, "notebook_dir": "/tmp/\x00"}})
@example(doc={"service": {"state_dir": "/x\x00"}})
def test_parse_raises_only_config_error(doc: dict) -> None:
    parse(doc)


@FUZZ
@given(doc=documents)
@example(doc={"\n": []})
@example(doc={"lab": {**ROOT_OK, "po\nrt": 1}})
def test_parse_errors_are_one_line(doc: dict) -> None:
    try:
        config.parse(doc, "fuzz.toml", None, {}, CWD)
    except config.ConfigError as exc:
        assert_one_line(str(exc), "fuzz.toml")
    except Exception:  # a crash is test_parse_raises_only_config_error's finding
        reject()


@FUZZ
@given(doc=documents)
@example(doc={"lab": {**ROOT_OK, "env": {"EDITOR": "vi\x7f"}}})
@example(doc={"lab": {**ROOT_OK, "options": {"ServerApp.x": float("nan")}}})
def test_render_round_trips(doc: dict) -> None:
    """check-config prints render(); what it prints must read back as the same config."""
    try:
        cfg = config.parse(doc, "fuzz.toml", None, {}, CWD)
    except config.ConfigError:
        return
    except Exception:  # a crash in parse() is test_parse_raises_only_config_error's finding
        reject()
    text = config.render(cfg)
    again = config.parse(tomllib.loads(text), "rendered", None, {}, CWD)
    assert config.render(again) == text


# --- the command line --------------------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JLSERVICE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "jlservice", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd="/",
    )


def assert_config_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 78, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert result.stderr.startswith("jlservice: "), result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00garbage",
        b"[lab\nport = 1\n",
        b"port = = 1\n",
        b"[lab]\nprot = 8888\n",
        b'[lab]\nport = "8888"\nallow_root = true\n',
        b"[lab]\nport = 70000\nallow_root = true\n",
        b"\x00" * 10,
        b'[lab]\n"po\\nrt" = 1\n',
        b'[lab]\nuser = "ro\\u0000ot"\n',
    ],
    ids=[
        "binary",
        "broken-table",
        "double-equals",
        "typo",
        "string-port",
        "port-range",
        "nul-bytes",
        "newline-in-key",
        "nul-in-user",
    ],
)
def test_check_config_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "jlservice.toml"
    path.write_bytes(content)
    assert_config_failure(check_config(path))


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(min_size=1, max_size=200).filter(lambda b: b"allow_root" not in b))
def test_check_config_arbitrary_bytes(fuzz_file: Path, raw: bytes) -> None:
    fuzz_file.write_bytes(raw)
    result = check_config(fuzz_file)
    if IS_ROOT or result.returncode != 0:
        assert_config_failure(result)


def test_check_config_valid_file_prints_toml(tmp_path: Path) -> None:
    path = tmp_path / "jlservice.toml"
    table = {"notebook_dir": str(tmp_path), "port": 9999}
    if IS_ROOT:
        table["allow_root"] = True
    path.write_text("[lab]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["lab"]["port"] == 9999
    assert "OK" in result.stderr


def test_date_values_are_not_a_crash() -> None:
    """TOML has dates; a date where a string or number belongs is a ConfigError."""
    when = dt.datetime(2024, 1, 2, 3, 4, 5)
    for key in ("user", "port", "notebook_dir", "ip", "umask", "base_url"):
        assert parse({"lab": {"allow_root": True, key: when}}) is None
    assert parse({"lab": {"allow_root": True, "env": {"A": dt.date(2024, 1, 2)}}}) is None
    assert parse({"lab": {"allow_root": True, "options": {"A.b": dt.time(1, 2)}}}) is None
