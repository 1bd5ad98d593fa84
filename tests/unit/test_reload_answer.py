"""`jlservice reload` knows the supervisor's answer by the record's sequence, not the clock."""

from __future__ import annotations

import pytest

from jlservice import state
from jlservice.cli._client import _answers
from jlservice.errors import CommandError

ASKED = state.State(
    token="t",
    url="http://127.0.0.1:8888/",
    ip="127.0.0.1",
    port=8888,
    base_url="/",
    user="alice",
    notebook_dir="/srv",
    config_path=None,
    supervisor_pid=7,
    supervisor_started_at=1.0,
    supervisor_start_ticks=70,
    sequence=5,
    last_reload=state.LastReload(9e9, "file", "unchanged", 4),  # a later clock, earlier
)


def test_an_answer_is_a_reload_recorded_after_the_question() -> None:
    assert not _answers(ASKED.evolve(sequence=6), ASKED)  # something else changed
    answer = state.LastReload(1.0, "SIGHUP", "unchanged", 7)  # the clock stepped back
    assert _answers(ASKED.evolve(sequence=7, last_reload=answer), ASKED)


def test_an_older_supervisor_without_sequence_answers_with_a_new_last_reload() -> None:
    old = ASKED.evolve(sequence=0, last_reload=state.LastReload(5.0, "file", "applied"))
    assert not _answers(old, old)
    assert _answers(old.evolve(last_reload=state.LastReload(6.0, "SIGHUP", "unchanged")), old)


def test_a_supervisor_restarted_meanwhile_is_said_so() -> None:
    with pytest.raises(CommandError, match="restarted before it answered"):
        _answers(ASKED.evolve(supervisor_pid=8, sequence=1), ASKED)
