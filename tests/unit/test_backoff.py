"""supervisor.policy: the backoff (at once after one failure, then initial, doubling, capped)
and the waits for a port another program holds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jlservice.config import RestartConfig
from jlservice.errors import NotebookDirNotAnswering, PortInUse
from jlservice.supervisor.policy import MIN_WAIT_S, Waiting, backoff_delay

RESTART = RestartConfig(initial_delay=0.5, max_delay=30.0)


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 0.0), (2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0), (8, 30.0), (9, 30.0)],
)
def test_sequence(failures: int, delay: float) -> None:
    assert backoff_delay(failures, RESTART) == delay


def test_first_failure_restarts_at_once_whatever_the_settings() -> None:
    assert backoff_delay(1, RestartConfig(initial_delay=10.0, max_delay=60.0)) == 0.0


def test_cap_below_the_second_step() -> None:
    restart = RestartConfig(initial_delay=2.0, max_delay=3.0)
    assert [backoff_delay(n, restart) for n in range(1, 6)] == [0.0, 2.0, 3.0, 3.0, 3.0]


def test_zero_initial_delay_never_waits() -> None:
    restart = RestartConfig(initial_delay=0.0, max_delay=0.0)
    assert {backoff_delay(n, restart) for n in range(0, 50)} == {0.0}


# max_failures is at most 1000, so the supervisor never asks for more failures than that.
restarts = st.builds(
    lambda initial, extra: RestartConfig(initial_delay=initial, max_delay=initial + extra),
    st.floats(0, 86400, allow_nan=False),
    st.floats(0, 86400, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(restart=restarts, failures=st.integers(2, 1000))
def test_doubling_and_capped(restart: RestartConfig, failures: int) -> None:
    delay = backoff_delay(failures, restart)
    previous = backoff_delay(failures - 1, restart)
    assert 0 <= delay <= restart.max_delay
    assert delay >= previous
    if failures >= 3 and delay < restart.max_delay:
        assert delay == pytest.approx(2 * previous)
    if failures == 2:
        assert delay == min(restart.initial_delay, restart.max_delay)


def test_a_port_held_for_days_keeps_its_wait_at_max_delay() -> None:
    """A thousand waits (8.5 h with the defaults) once overflowed 2 ** waits and ended
    the supervisor."""
    wait = Waiting()
    held = PortInUse("pid 7 (jupyter-lab) of user bob")
    delays = [wait.again(held, RESTART)[0] for _ in range(10_000)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and set(delays[6:]) == {30.0}


def test_a_port_wait_never_spins_even_with_zero_delays() -> None:
    wait = Waiting()
    zero = RestartConfig(initial_delay=0.0, max_delay=0.0)
    assert {wait.again(PortInUse("bob"), zero)[0] for _ in range(5)} == {MIN_WAIT_S}


def test_a_cause_is_news_once_until_it_changes() -> None:
    wait = Waiting()
    dead = NotebookDirNotAnswering
    causes = [PortInUse("a"), PortInUse("a"), PortInUse("b"), dead("b"), dead("b")]
    assert [wait.again(cause, RESTART)[1] for cause in causes] == [True, False, True, True, False]
    assert wait.end() is causes[-1] and wait.end() is None and wait.waits == 0
