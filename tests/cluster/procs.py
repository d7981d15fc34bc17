"""Child processes that cannot outlive the tests: start, stop, log, wait.

Every child runs in its own process group (so a stop reaches what it forked)
and gets SIGKILL from the kernel if the thread that started it dies
(PR_SET_PDEATHSIG), so even a pytest killed with SIGKILL leaves nothing
running.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

_PR_SET_PDEATHSIG = 1
# Looked up once in the parent: loading a library between fork and exec in a
# threaded process can deadlock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` with stdout and stderr appended to ``log_path``.

    Raises FileNotFoundError when the program does not exist.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; return the exit code."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Also reap anything the child forked and left behind in its group.
    _signal_group(proc, signal.SIGKILL)
    return proc.wait()


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group at once (a crash, not a shutdown)."""
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now on ``host`` (the kernel's choice)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that nothing listens on now on ``host``.

    The kernel picks them; all are held open until all are picked, so no two
    are the same.
    """
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def port_is_free(host: str, port: int) -> bool:
    """True if ``host:port`` can be bound now (no other server holds it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               alive: Sequence[subprocess.Popen] = (), interval_s: float = 0.1) -> None:
    """Poll ``check()`` until it returns True.

    Raises TimeoutError after ``timeout_s`` seconds, or RuntimeError at once if
    one of the ``alive`` processes exits meanwhile (no point in waiting then).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        for proc in alive:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: {proc.args[0]} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s:.0f} s")
        time.sleep(interval_s)
