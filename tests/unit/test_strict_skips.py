"""Where every test must run, a skip not on the list of allowed skips fails the run."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

ALLOWED = '[tool.pytest.ini_options]\nallowed_skips = ["an allowed reason | why it may stay"]\n'
TESTS = """
import pytest

def test_runs():
    pass

def test_skips_for_an_allowed_reason():
    pytest.skip("an allowed reason")

@pytest.mark.skipif(True, reason="chromium is not installed")
def test_skips_for_another():
    pass

@pytest.fixture
def needs_something():
    pytest.skip("needs root")

def test_skipped_by_a_fixture(needs_something):
    pass
"""


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_an_unexpected_skip_fails_a_strict_run(pytester, monkeypatch, strict) -> None:
    monkeypatch.setenv("JLSERVICE_STRICT_SKIPS", "1" if strict else "0")
    pytester.makepyprojecttoml(ALLOWED)
    pytester.makepyfile(test_some=TESTS)
    result = pytester.runpytest("-p", "helpers.skips", "-p", "no:cacheprovider")
    if strict:
        result.assert_outcomes(passed=1, skipped=1, errors=2)  # skipped in setup: errors
        result.stdout.fnmatch_lines(["*unexpected skip: 'chromium is not installed'*"])
        result.stdout.fnmatch_lines(["*unexpected skip: 'needs root'*"])
        assert result.ret == pytest.ExitCode.TESTS_FAILED
    else:
        result.assert_outcomes(passed=1, skipped=3)
        assert result.ret == pytest.ExitCode.OK
