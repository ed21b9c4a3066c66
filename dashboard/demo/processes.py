"""The demo's child processes: what to run for each library, and starting and stopping them as one.

Each child gets its own session (so a terminal's Ctrl-C reaches only the demo, which then stops the
children in order: producers and schedulers, then workers, then the dashboard) and, on Linux, dies
with the demo if the demo itself is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..procs import die_with_parent
from .envs import APPS_PACKAGE

__all__ = ["Child", "Spec", "lib_specs", "spawn", "stop_all"]

#: Roles in the order the demo stops them: nothing is enqueued once workers start to stop.
ROLES = ("producer", "scheduler", "worker", "dashboard", "redis")


@dataclass(frozen=True)
class Spec:
    """One process to run: a name for messages and logs, its role, and its command line."""

    name: str
    role: str
    argv: tuple[str, ...]


def lib_specs(lib: str, bindir: Path) -> list[Spec]:
    """The worker, scheduler and producer processes of one library, run from its venv."""
    b = str(bindir)
    app = f"{APPS_PACKAGE}.{lib}_app"
    producer = Spec(f"{lib} producer", "producer", (f"{b}/python", "-m", f"{APPS_PACKAGE}.{lib}_producer"))
    if lib == "arq":  # arq runs its cron jobs inside the worker
        return [Spec("arq worker (+ cron)", "worker", (f"{b}/arq", f"{app}.WorkerSettings")), producer]
    if lib == "dramatiq":
        return [
            Spec("dramatiq worker", "worker", (f"{b}/dramatiq", app, "--processes", "1", "--threads", "4")),
            Spec("periodiq", "scheduler", (f"{b}/periodiq", app)),
            producer,
        ]
    if lib == "taskiq":
        return [
            Spec("taskiq worker", "worker",
                 (f"{b}/taskiq", "worker", f"{app}:broker", "--workers", "1", "--max-async-tasks", "20")),
            # --update-interval 1: retries are one-off schedules, and they are due within seconds.
            Spec("taskiq scheduler", "scheduler",
                 (f"{b}/taskiq", "scheduler", f"{app}:scheduler", "--update-interval", "1")),
            producer,
        ]
    if lib == "celery":
        celery = (f"{b}/celery", "-A", f"{app}:app")
        return [
            Spec("celery worker", "worker", (*celery, "worker", "-P", "threads", "-c", "4", "-n", "shop@%h",
                                             "--without-gossip", "--without-mingle", "-l", "warning")),
            Spec("celery beat", "scheduler", (*celery, "beat", "-l", "warning")),
            producer,
        ]
    raise ValueError(f"unknown library {lib!r}")


@dataclass
class Child:
    """A started process and where its output goes."""

    spec: Spec
    proc: subprocess.Popen[bytes]
    log: Path
    reported: bool = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def spawn(spec: Spec, env: Mapping[str, str], cwd: Path, logdir: Path) -> Child:
    """Start one process in its own session, its output going to ``<logdir>/<name>.log``."""
    log = logdir / (spec.name.split(" (")[0].replace(" ", "-") + ".log")
    out: IO[bytes] = open(log, "wb")
    try:
        proc = subprocess.Popen(
            list(spec.argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,  # a killed demo leaves no worker running
        )
    finally:
        out.close()
    return Child(spec, proc, log)


def _signal_group(child: Child, sig: int) -> None:
    try:
        os.killpg(child.proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(children: Iterable[Child], timeouts: Mapping[str, float]) -> None:
    """SIGTERM the children role by role (``ROLES`` order), wait, then SIGKILL whatever is left of each group."""
    children = list(children)
    for role in ROLES:
        group = [c for c in children if c.spec.role == role]
        for child in group:
            if child.alive:
                # The leader only: dramatiq and taskiq pass it on to their pool processes, and a pool
                # process of dramatiq that gets a second SIGTERM is killed rather than stopped.
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeouts.get(role, 10.0)
        while any(c.alive for c in group) and time.monotonic() < deadline:
            time.sleep(0.1)
        for child in group:
            # Also sweeps up stragglers of a group whose leader has exited (pool processes).
            _signal_group(child, signal.SIGKILL)
            try:
                child.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
