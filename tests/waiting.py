"""Waiting on a condition in multi-process tests: poll, bounded in time, never a bare sleep."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
             interval: float = 0.1, explain: Callable[[], Any] | None = None) -> Any:
    """Return ``predicate()``'s first truthy value; fail the test if none comes within ``timeout`` seconds
    (the failure shows ``explain()``, the state the condition looked at, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    detail = ""
    if explain is not None:
        try:
            detail = f"; at the end: {explain()!r}"
        except Exception as exc:  # noqa: BLE001 - the timeout is the failure to report
            detail = f"; explaining it failed: {exc!r}"
    raise AssertionError(f"{what}: not met within {timeout}s{detail}")


def processes_using(directory: Path | str) -> list[int]:
    """PIDs of live processes whose command line mentions ``directory`` (the nodes of a cluster there)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(directory) in cmdline and "actors.node" in cmdline:
                pids.append(int(entry.name))
    return pids


def kill_leftovers(directory: Path | str) -> None:
    """SIGKILL, by PID, every node process still running on ``directory``."""
    for pid in processes_using(directory):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
