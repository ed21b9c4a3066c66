"""Per-library virtualenvs for tests that run real workers (arq, dramatiq, taskiq, celery).

The libraries' latest releases cannot share one environment (arq pins redis<6, taskiq-redis needs
redis>=8), so each gets its own venv built from ``dashboard/demo/requirements/<name>.txt`` (the pins `flowerbed demo` ships) or, for test-only envs, ``tests/libenvs/<name>.txt``. Envs are cached under
``$FLOWERBED_LIBENV_CACHE`` (default ``~/.cache/flowerbed/libenvs``) keyed by a hash of the
requirements file, so CI builds them once per machine. The repository root is put on the env's
path with a ``.pth`` file, so workers import this checkout's ``collectors``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CACHE = Path(os.environ.get("FLOWERBED_LIBENV_CACHE", Path.home() / ".cache" / "flowerbed" / "libenvs"))


#: The four job libraries' pins are the ones `flowerbed demo` ships; only test-only envs live here.
SHIPPED = ROOT / "dashboard" / "demo" / "requirements"


def requirements(name: str) -> Path:
    """The requirements file of one env: a test-only one here, else the shipped pins."""
    local = HERE / f"{name}.txt"
    return local if local.exists() else SHIPPED / f"{name}.txt"


def env_dir(name: str) -> Path:
    digest = hashlib.sha256(requirements(name).read_bytes() + sys.version.encode()).hexdigest()[:12]
    return CACHE / f"{name}-{digest}"


def ensure_env(name: str) -> Path:
    """Build (once) the env for ``name`` and return its bin directory."""
    target = env_dir(name)
    bindir = target / "bin"
    marker = target / ".complete"
    if marker.exists():
        _link_checkout(bindir)
        return bindir
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            _link_checkout(bindir)
            return bindir
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(target)], check=True)
        subprocess.run(
            [str(bindir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "-r", str(requirements(name))],
            check=True,
        )
        _link_checkout(bindir)
        marker.write_text(requirements(name).read_text())
    return bindir


def _link_checkout(bindir: Path) -> None:
    """Point the env at this checkout (the cache may have been built from another clone)."""
    site = next((bindir.parent / "lib").glob("python3*/site-packages"))
    pth = site / "flowerbed_checkout.pth"
    if not pth.exists() or pth.read_text().strip() != str(ROOT):
        pth.write_text(str(ROOT) + "\n")
