"""The wheel carries templates/ and static/: install it into a fresh venv and serve from it."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import start_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_serves_pages_and_static_files(tmp_path: Path, stream_name: str) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("flowerbed-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dashboard/_static/vendor/htmx-2.0.11.min.js" in names
    assert any(n.startswith("dashboard/_templates/") for n in names)
    assert not any(n.startswith("tests/") for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # Install the wheel's dependencies from the index this machine uses, then the wheel itself.
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"{wheel}[dashboard]"],
                   check=True, capture_output=True, timeout=600)

    server = start_server(tmp_path, stream_name, python=str(python), command=("-m", "dashboard", "serve"))
    try:
        status, body, headers = server.get("/static/vendor/htmx-2.0.11.min.js")
        assert status == 200 and body.startswith(b"var htmx")
        status, body, headers = server.get("/")
        assert status == 200 and b"<html" in body.lower()
        assert server.get_json("/api/jobs") == {"items": [], "next_cursor": None}
        imported = subprocess.run([str(python), "-c", "import dashboard; print(dashboard.__file__)"],
                                  capture_output=True, text=True, check=True, cwd=tmp_path).stdout
        assert str(env_dir) in imported  # served from the installed wheel, not this checkout
    finally:
        server.stop()
