"""The supervisor's restart policy (service/supervisor.py): a child that exits before it said it was ready cannot
start and stops the server at once; one that crashes once ready is started again, up to a bound.

The policy is pure (unit tests, with a clock given); ``supervisor.run`` is driven with stand-in children, small
Python programs that follow the children's protocol (``--ready-fd``) and then exit, each start noted in a file.
The real processes (a real engine and workers killed with SIGKILL and started again) are in tests/test_processes.py.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest

from service import supervisor
from service.settings import Settings
from service.supervisor import RestartPolicy, exit_described

# A stand-in child: note its start (engine or worker), say ready if asked, exit with status 3.
CHILD = """
import os, sys
argv = sys.argv[1:]
with open(os.environ["SUPERVISOR_TEST_STARTS"], "a") as starts:
    starts.write(argv[0] + "\\n")
if os.environ["SUPERVISOR_TEST_READY"] == "yes":
    fd = int(argv[argv.index("--ready-fd") + 1])
    os.write(fd, b"ready\\n")
    os.close(fd)
sys.exit(3)
"""


@pytest.mark.unit
def test_an_exit_before_ready_stops_at_once_and_a_signal_does_not():
    policy = RestartPolicy("engine", max_crashes=5, window=60)
    assert policy.exited(-signal.SIGKILL, ready=False, now=0.0) is None  # killed (OOM, an operator): again
    error = policy.exited(3, ready=False, now=1.0)
    assert error == ("error: the engine process exited with status 3 before it was ready (its log above says "
                     "why); stopping the server")


@pytest.mark.unit
def test_crashes_after_ready_are_restarted_up_to_the_bound_within_the_window():
    policy = RestartPolicy("worker 1", max_crashes=3, window=60)
    assert [policy.exited(1, ready=True, now=t) for t in (0.0, 10.0, 20.0)] == [None] * 3
    error = policy.exited(-signal.SIGSEGV, ready=True, now=30.0)  # the fourth within 60 s
    assert error is not None and error.startswith("error: the worker 1 process keeps crashing: 4 times within 60 s "
                                                  "(the last time it was killed by SIGSEGV")
    spaced = RestartPolicy("worker 1", max_crashes=3, window=60)
    assert all(spaced.exited(1, ready=True, now=t) is None for t in range(0, 1000, 25))  # 3 in any 60 s: forever


@pytest.mark.unit
def test_exit_statuses_in_words():
    assert exit_described(0) == "exited with status 0"
    assert exit_described(-signal.SIGKILL) == "was killed by SIGKILL"
    assert exit_described(-99) == "was killed by signal 99"


def run_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, ready: bool) -> tuple[str, list[str]]:
    """``supervisor.run`` with one worker, both children stand-ins: its one-line error and the starts."""
    starts = tmp_path / "starts"
    monkeypatch.setattr(supervisor, "COMMAND", [sys.executable, "-c", CHILD])
    monkeypatch.setenv("SUPERVISOR_TEST_STARTS", str(starts))
    monkeypatch.setenv("SUPERVISOR_TEST_READY", "yes" if ready else "no")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with socket.create_server(("127.0.0.1", 0)) as sock, pytest.raises(SystemExit) as exited:
            supervisor.run(Settings(data_dir=tmp_path / "data"), 1, sock)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return str(exited.value), starts.read_text().split()


@pytest.mark.integration
def test_a_child_that_exits_before_it_is_ready_is_not_started_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    error, starts = run_with(monkeypatch, tmp_path, ready=False)
    assert error.startswith("error: the ") and error.endswith(
        " process exited with status 3 before it was ready (its log above says why); stopping the server")
    assert sorted(starts) == ["engine", "worker"]  # each started once


@pytest.mark.integration
def test_a_child_that_keeps_crashing_once_ready_stops_the_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(supervisor, "MAX_CRASHES", 2)
    error, starts = run_with(monkeypatch, tmp_path, ready=True)
    name = error.removeprefix("error: the ").split(" process")[0]
    assert name in ("engine", "worker 1")
    assert error.endswith(" process keeps crashing: 3 times within 60 s (the last time it exited with status 3; "
                          "its log above says why); stopping the server")
    assert starts.count(name.split()[0]) == 3  # started, then again after each of the first two crashes
