"""Fuzzing config: whatever the file holds, the only failure is a one-line ConfigError."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import pwd
import subprocess
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jlservice import config
from jlservice.config import model, validate

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


def _sections() -> dict[str, dict[str, Any]]:
    """Every section of the file and its keys with their types, read off the configuration
    dataclasses (jlservice/config/model.py, service.py): a key added there is fuzzed here
    with no change to this file. Fields not shown in repr are what jlservice read from the
    files keys name (a password hash, a certificate), not keys."""
    sections: dict[str, dict[str, Any]] = {}
    for section, kind in typing.get_type_hints(model.Config).items():
        if dataclasses.is_dataclass(kind):
            hints = typing.get_type_hints(kind)
            keys = {f.name: hints[f.name] for f in dataclasses.fields(kind) if f.repr}
        elif hasattr(kind, "_fields"):  # ServiceConfig, a NamedTuple (light, for `token`)
            keys = typing.get_type_hints(kind)
        else:  # path, digest: about the file, not in it
            continue
        sections[section] = keys
    return sections


SECTIONS = _sections()
KNOWN_KEYS = {name: sorted(keys) for name, keys in SECTIONS.items()}
ALL_KEYS = sorted({k for keys in KNOWN_KEYS.values() for k in keys})


def test_the_fuzzed_keys_are_the_keys_a_file_may_hold() -> None:
    """The dataclasses and the parser agree: each key derived is one parse() knows (it may
    refuse the value, never the key), and each section."""
    assert set(KNOWN_KEYS) == validate.SECTIONS
    assert {"public_url", "user", "umask"} <= set(KNOWN_KEYS["lab"])  # e.g.
    assert {"warm", "max_crashes"} <= set(KNOWN_KEYS["restart"])
    for section, keys in KNOWN_KEYS.items():
        for key in [*keys, "no_such_key"]:
            doc: dict[str, dict[str, Any]] = {"lab": {"allow_root": True}}
            doc.setdefault(section, {})[key] = [[]]
            message = error_of(lambda doc=doc: config.parse(doc, "fuzz.toml", None, {}, CWD))
            assert message is not None, (section, key)
            assert ("unknown key" in message) == (key == "no_such_key"), message


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

paths = st.one_of(
    st.sampled_from(["/nonexistent-jls/file", "relative/file", "/tmp", "/dev/null", ""]),
    st.builds(lambda t: "/nonexistent-jls/" + t, texts),
)


def of_type(kind: Any) -> st.SearchStrategy:
    """Values of a key's type, for a key no strategy below was written for."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) and type(None) in args:  # X | None: X, or left out
        (kind,) = [a for a in args if a is not type(None)]
        return of_type(kind)
    simple = {bool: st.booleans(), int: counts, float: seconds, str: texts, Path: paths}
    if kind in simple:
        return simple[kind]
    if typing.get_origin(kind) is Mapping:
        return st.dictionaries(texts, texts, max_size=3)
    if typing.get_origin(kind) is tuple:
        return st.lists(texts, max_size=3)
    raise AssertionError(f"no strategy for values of {kind}: add one to WRITTEN")


# Values that mean something to jlservice, where random ones of the type would be refused
# at once; every other key gets any value of its type (of_type).
WRITTEN = {
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
    "reload": {"when": st.sampled_from(["immediate", "idle"])},
    "log": {
        "level": st.sampled_from(["debug", "INFO", "Warning", "error"]),
        "format": st.sampled_from(["console", "json"]),
    },
    "metrics": {
        "listen": st.sampled_from(["127.0.0.1:9877", "[::1]:9877", "0.0.0.0:0", "::1:1", "x"]),
        "interval": st.floats(0.5, 86400),
    },
}
# Documents that mostly pass: every key optional, every value of the right type (and
# free text wherever the file may hold free text), so that fuzzing reaches render().
VALID = {
    section: {key: WRITTEN.get(section, {}).get(key, of_type(kind)) for key, kind in keys.items()}
    for section, keys in SECTIONS.items()
}
REQUIRED = {"lab": {"allow_root": st.just(True)}} if IS_ROOT else {}

valid_sections = {
    name: st.fixed_dictionaries(
        REQUIRED.get(name, {}),
        optional={k: v for k, v in fields.items() if k not in REQUIRED.get(name, {})},
    )
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
    for load in (
        lambda: config.load(fuzz_file, environ={}, cwd=CWD),
        lambda: config.load_service(fuzz_file, environ={}),
    ):
        message = error_of(load)
        if message is not None:
            assert_one_line(message, str(fuzz_file))


# --- parsing documents -------------------------------------------------------------------


ROOT_OK = {"allow_root": True} if IS_ROOT else {}


@FUZZ
@given(doc=documents)
@example(doc={"lab": {**ROOT_OK, "user": "ro\x00ot"}})
@example(doc={"lab": {**ROOT_OK, "notebook_dir": "/tmp/\x00"}})
@example(doc={"service": {"state_dir": "/x\x00"}})
def test_parse_raises_only_config_error(doc: dict) -> None:
    cfg = parse(doc)  # any other exception fails the test
    assert cfg is None or isinstance(cfg, config.Config)


@FUZZ
@given(doc=documents)
@example(doc={"\n": []})
@example(doc={"lab": {**ROOT_OK, "po\nrt": 1}})
def test_parse_errors_are_one_line(doc: dict) -> None:
    message = error_of(lambda: config.parse(doc, "fuzz.toml", None, {}, CWD))
    if message is not None:
        assert_one_line(message, "fuzz.toml")


@FUZZ
@given(doc=documents)
@example(doc={"lab": {**ROOT_OK, "env": {"EDITOR": "vi\x7f"}}})
@example(doc={"lab": {**ROOT_OK, "options": {"ServerApp.x": float("nan")}}})
@example(doc={"lab": ROOT_OK})  # the defaults: valid, so render() is reached
def test_render_round_trips(doc: dict) -> None:
    """check-config prints render(); what it prints must read back as the same config."""
    cfg = parse(doc)
    if cfg is None:
        return
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
