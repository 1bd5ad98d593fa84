"""The shipped Prometheus rules: valid (`promtool check rules`), and each alert fires on the
series that should fire it, when its `for:` says, and not on a healthy machine
(`promtool test rules` on rules_test.yml)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.prometheus import RULES, load_yaml, tool

UNIT_TESTS = Path(__file__).with_name("rules_test.yml")
HEALTHY = "healthy machines raise nothing"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def shipped_rules() -> list[dict]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def test_the_rules_pass_promtool_check_with_every_lint() -> None:
    done = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(shipped_rules())} rules found" in done.stdout


def test_the_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_rule_has_a_unit_test() -> None:
    """Each alert, at each severity, fires in some case and is checked silent in the healthy
    one at every time it checks; each recording rule is evaluated by a case."""
    tests = load_yaml(UNIT_TESTS)["tests"]
    (healthy,) = (t for t in tests if t["name"] == HEALTHY)
    times = {case["eval_time"] for case in healthy["alert_rule_test"]}
    silent = {
        (case["alertname"], case["eval_time"])
        for case in healthy["alert_rule_test"]
        if case["exp_alerts"] == []
    }
    fired = {
        (case["alertname"], alert["exp_labels"]["severity"])
        for t in tests
        for case in t.get("alert_rule_test", [])
        for alert in case["exp_alerts"]
    }
    recorded = {case["expr"] for t in tests for case in t.get("promql_expr_test", [])}
    for rule in shipped_rules():
        if "record" in rule:
            assert rule["record"] in recorded, rule["record"]
            continue
        name = rule["alert"]
        assert (name, rule["labels"]["severity"]) in fired, f"{name} never fires in a test"
        assert {(name, t) for t in times} <= silent, f"{name} not in the healthy case"
