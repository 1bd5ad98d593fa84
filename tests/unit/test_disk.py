"""Free space: what counts as low, and a statvfs that hangs (a network filesystem whose
server is gone) never keeps the reader waiting longer than its timeout."""

from __future__ import annotations

import os
import threading
import time

import pytest
from helpers.procs import wait_for

from jlservice import disk
from jlservice.errors import NotAnswering

GiB = 2**30


@pytest.mark.parametrize(
    ("available", "size", "low"),
    [
        (0.9 * GiB, 20 * GiB, True),  # under 5 % of a small disk
        (1.1 * GiB, 20 * GiB, False),
        (9 * GiB, 10_000 * GiB, True),  # a big one: under 10 GiB
        (11 * GiB, 10_000 * GiB, False),  # 0.1 %, but 11 GiB is room enough
        (0, 0, False),  # a filesystem with no blocks (procfs-like): nothing to warn about
    ],
)
def test_low_is_under_5_percent_or_10_gib_whichever_is_less(available, size, low) -> None:
    assert disk.Space(int(available), int(size)).low is low


def test_describe_says_free_total_and_share() -> None:
    assert disk.Space(512 * 2**20, 20 * GiB).describe() == "512 MiB free of 20.0 GiB (2.5%)"


def test_the_reading_is_statvfs_for_the_lab_user(tmp_path) -> None:
    st = os.statvfs(tmp_path)
    space = disk.read_space(tmp_path, 5.0)
    assert space is not None and space.size == st.f_blocks * st.f_frsize
    assert abs(space.available - st.f_bavail * st.f_frsize) < 64 * 2**20  # others write too


def test_a_missing_path_reads_as_nothing(tmp_path) -> None:
    assert disk.read_space(tmp_path / "gone", 5.0) is None
    with pytest.raises(FileNotFoundError):
        disk.stat(tmp_path / "gone", 5.0)


def test_a_hanging_filesystem_costs_one_thread_and_the_timeout() -> None:
    answer = threading.Event()
    calls = []

    def hanging():
        calls.append(1)
        answer.wait(30)
        return "late"

    thread = disk.OneThread()
    began = time.monotonic()
    with pytest.raises(NotAnswering, match=r"no answer within 0\.2 s"):
        thread.call(hanging, 0.2)
    assert 0.2 <= time.monotonic() - began < 2
    began = time.monotonic()
    with pytest.raises(NotAnswering, match="still no answer"):
        thread.call(hanging, 0.2)  # still hung: not asked again
    assert time.monotonic() - began < 0.1 and len(calls) == 1
    answer.set()

    def answered():
        try:
            return thread.call(lambda: "now", 2.0)
        except NotAnswering:
            return None

    assert wait_for(answered, 5, "the filesystem answering") == "now"
    assert len(calls) == 1  # the stale answer was dropped, not returned


def test_callers_in_two_threads_each_get_their_own_answer() -> None:
    """The sampler's thread and the loop's ask the same filesystem: an answer one of them
    gave up on never reaches the other."""
    thread = disk.OneThread()
    wrong = []

    def ask(tag: str) -> None:
        for i in range(2000):
            try:
                answer = thread.call(lambda i=i: (tag, i), 5.0)
            except NotAnswering:
                continue
            if answer != (tag, i):
                wrong.append(answer)

    workers = [threading.Thread(target=ask, args=(tag,)) for tag in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not wrong
    # A late answer to a caller that gave up goes to nobody.
    slow = threading.Event()
    with pytest.raises(NotAnswering):
        thread.call(lambda: slow.wait(5) and "late", 0.1)
    slow.set()
    assert wait_for(lambda: _answer(thread, "mine"), 5, "the thread free again") == "mine"


def _answer(thread: disk.OneThread, value: str) -> str | None:
    try:
        return thread.call(lambda: value, 2.0)
    except NotAnswering:
        return None


def test_an_exception_of_any_kind_is_the_callers_and_the_thread_goes_on() -> None:
    thread = disk.OneThread()
    with pytest.raises(ValueError, match="embedded null byte"):
        thread.call(lambda: os.stat("a\0b"), 2.0)
    assert thread.call(lambda: "still here", 2.0) == "still here"


def test_paths_of_past_configurations_are_let_go_but_the_hung_ones() -> None:
    hung = threading.Event()
    with pytest.raises(NotAnswering):
        disk.call("/dead", lambda: hung.wait(10), 0.1)
    try:
        for i in range(20):
            assert disk.call(f"/p{i}", lambda i=i: i, 2.0) == i
        assert "/dead" in disk._DIRS and len(disk._DIRS) <= 9
        with pytest.raises(NotAnswering, match="still no answer"):
            disk.call("/dead", lambda: "never asked", 2.0)
    finally:
        hung.set()
