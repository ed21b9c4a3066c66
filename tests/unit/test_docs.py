"""The README's configuration tables match the settings the code reads (Datasette's test_docs idea)."""

from __future__ import annotations

import re
from pathlib import Path

from collectors import constants
from dashboard.config import OPTIONS, settings_from

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def table_rows(heading_text: str) -> list[list[str]]:
    """Rows of the first Markdown table after the line containing ``heading_text``."""
    lines = README.split(heading_text, 1)[1].splitlines()
    rows, started = [], False
    for line in lines:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= {"-", " "}:
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header


def test_every_dashboard_setting_is_documented_with_its_flag() -> None:
    rows = table_rows("Every dashboard setting")
    documented = {re.sub(r"[`]", "", r[0]): re.sub(r"[`]", "", r[1]) for r in rows}
    expected = {o.env: o.flag for o in OPTIONS}
    assert documented == expected


def test_every_collector_variable_is_documented() -> None:
    rows = table_rows("The collectors read these")
    documented = {re.sub(r"[`]", "", r[0]) for r in rows}
    expected = {getattr(constants, n) for n in dir(constants) if n.startswith("ENV_")}
    assert documented == expected


def test_settings_come_from_flags_then_environment_then_defaults() -> None:
    import argparse

    from dashboard.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "7000"])
    settings = settings_from(args, {"FLOWERBED_PORT": "6000", "FLOWERBED_STREAM": "s", "FLOWERBED_LOST_AFTER_S": "2.5"})
    assert settings.port == 7000 and settings.stream == "s" and settings.lost_after_s == 2.5
    assert settings.host == "127.0.0.1"
