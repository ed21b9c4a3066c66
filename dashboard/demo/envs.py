"""One cached virtualenv per job library for ``flowerbed demo``.

The libraries' latest releases cannot share one environment (arq 0.28 pins redis<6, celery 5.7 needs
redis>=6.4, taskiq-redis 1.2 needs redis>=8), so each runs from its own venv, built on first use from
``requirements/<lib>.txt`` and kept under ``$FLOWERBED_CACHE_DIR/demo`` (default
``~/.cache/flowerbed/demo``), keyed by a hash of the requirements and the Python version.

The venvs do not depend on a source checkout: each gets a *shim* directory on its path (a ``.pth``
file) holding symlinks to the installed ``collectors`` package and to the demo apps package, refreshed
on every run, so the same cache works from a checkout or from an installed wheel.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import collectors

__all__ = ["APPS_PACKAGE", "EnvError", "LIBS", "cache_root", "ensure_env", "prepare"]

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements"
APPS_DIR = HERE / "apps"

#: The name the demo apps are imported under inside each library's venv.
APPS_PACKAGE = "flowerbed_demo_apps"

#: Every library the demo can run, in the order it starts them.
LIBS = ("arq", "dramatiq", "taskiq", "celery")


class EnvError(RuntimeError):
    """A library's environment could not be built (the message says what to do)."""


def cache_root() -> Path:
    """Where the demo's venvs live: ``$FLOWERBED_CACHE_DIR/demo``, else ``~/.cache/flowerbed/demo``."""
    base = os.environ.get("FLOWERBED_CACHE_DIR")
    if base:
        return Path(base).expanduser() / "demo"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "flowerbed" / "demo"


def env_dir(lib: str) -> Path:
    """The venv of one library; a new requirements file or Python gives a new directory."""
    digest = hashlib.sha256((REQUIREMENTS / f"{lib}.txt").read_bytes() + sys.version.encode()).hexdigest()[:12]
    return cache_root() / f"{lib}-{digest}"


def is_ready(lib: str) -> bool:
    """Whether the library's venv has been built completely."""
    return (env_dir(lib) / ".complete").exists()


def ensure_env(lib: str) -> Path:
    """Build (once) the venv of ``lib``, refresh its shim, and return its ``bin`` directory."""
    target = env_dir(lib)
    marker = target / ".complete"
    if not marker.exists():
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{lib}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two demos starting at once build it once
            if not marker.exists():
                _build(lib, target)
                marker.write_text((REQUIREMENTS / f"{lib}.txt").read_text())
    _link_shim(target)
    return target / "bin"


def prepare(libs: tuple[str, ...] | list[str], out: TextIO = sys.stdout) -> dict[str, Path]:
    """Ensure each library's venv, printing one progress line for each one that has to be built."""
    bins: dict[str, Path] = {}
    for lib in libs:
        if is_ready(lib):
            bins[lib] = ensure_env(lib)
            continue
        out.write(f"preparing the {lib} environment (first run only)… ")
        out.flush()
        t0 = time.monotonic()
        try:
            bins[lib] = ensure_env(lib)
        except EnvError:
            out.write("failed\n")
            out.flush()
            raise
        out.write(f"done in {time.monotonic() - t0:.0f} s\n")
        out.flush()
    return bins


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise EnvError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}\n(full log: {log})")


def _build(lib: str, target: Path) -> None:
    """Create the venv and install the pinned requirements into it, logging to ``<target>.log``."""
    log = target.parent / f"{target.name}.log"
    log.write_text("")
    if target.exists():
        shutil.rmtree(target)
    # With pip in this environment, drive it against the new venv (pip --python): faster, and it
    # works where the system Python lacks ensurepip (Debian without python3-venv).
    own_pip = importlib.util.find_spec("pip") is not None
    venv = [sys.executable, "-m", "venv"] + (["--without-pip"] if own_pip else []) + [str(target)]
    try:
        _run(venv, log)
    except EnvError as exc:
        raise EnvError(f"{exc}\nCould not create a virtualenv; on Debian/Ubuntu: apt install python3-venv") from None
    python = target / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)] if own_pip else [str(python), "-m", "pip"]
    _run([*pip, "install", "--disable-pip-version-check", "--no-input", "-q",
          "-r", str(REQUIREMENTS / f"{lib}.txt")], log)


def _link_shim(target: Path) -> None:
    """Point the venv at this installation's ``collectors`` and demo apps through symlinks and a .pth."""
    shim = target / "flowerbed-shim"
    shim.mkdir(exist_ok=True)
    _symlink(shim / "collectors", Path(collectors.__file__).resolve().parent)
    _symlink(shim / APPS_PACKAGE, APPS_DIR)
    site = next((target / "lib").glob("python3*/site-packages"))
    pth = site / "flowerbed_demo.pth"
    if not pth.exists() or pth.read_text().strip() != str(shim):
        pth.write_text(str(shim) + "\n")


def _symlink(link: Path, to: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == to:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(to, target_is_directory=True)
    os.replace(tmp, link)  # atomic: a demo starting alongside never sees it missing
