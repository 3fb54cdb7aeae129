"""Node processes started with the documented command, `leaderless node start ...`, for the tests across hosts.

Every process is ended by its PID (SIGTERM, then SIGKILL) when its ``Procs`` is closed, pass or fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def leaderless_command() -> list[str]:
    """The installed ``leaderless`` script next to this Python, else the same entry point through ``-m``."""
    script = Path(sys.executable).parent / "leaderless"
    if script.exists():
        return [str(script)]
    found = shutil.which("leaderless")
    return [found] if found else [sys.executable, "-m", "actors.cli"]


def clean_env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), out.get("PYTHONPATH", "")) if p)
    out.pop("LEADERLESS_SEEDS", None)
    out.pop("LEADERLESS_SECRET", None)
    out.pop("LEADERLESS_DATA_DIR", None)
    return out


def run_cli(*args: str, prefix: Sequence[str] = (), timeout: float = 60.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one ``leaderless`` command to its end (``prefix``: e.g. ``ip netns exec NS``; ``env``: variables to add)."""
    return subprocess.run([*prefix, *leaderless_command(), *args], cwd=ROOT, env={**clean_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


class Procs:
    """Long-running ``leaderless node start`` processes, by name; each one's output in ``log_dir/NAME.log``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """``leaderless node start --name NAME ARGS...`` in the background."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise AssertionError(f"{name} is still running")
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([*prefix, *leaderless_command(), "node", "start", "--name", name, *args],
                                    cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.started.append(proc)
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL (the crash case)."""
        proc = self.procs[name]
        _signal(proc, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self, name: str, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code."""
        proc = self.procs[name]
        _signal(proc, signal.SIGTERM)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            return proc.wait(timeout=10)

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def log(self, name: str) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(timeout=10)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]] | None:
    """Every file and directory under ``directory`` with its size, mtime and mode (None if it does not exist)."""
    if not directory.exists():
        return None
    out = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(directory))] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def copy_secret(source_dir: Path, target_dir: Path) -> Path:
    """What the operator does on every other host: copy the secret file, mode 0600."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / "secret"
    target.write_bytes((source_dir / "secret").read_bytes())
    target.chmod(0o600)
    return target
