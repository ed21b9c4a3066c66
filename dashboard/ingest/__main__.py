"""``python -m dashboard.ingest``: run ingest alone, configured like ``flowerbed ingest``."""

from __future__ import annotations

import argparse
import logging
import sys

from dashboard.config import add_arguments, settings_from

from .consumer import run_ingest


def main(argv: list[str] | None = None) -> int:
    """Parse the ingest flags (and FLOWERBED_* variables) and ingest until stopped."""
    parser = argparse.ArgumentParser(prog="python -m dashboard.ingest", description=__doc__)
    add_arguments(parser, ("redis_url", "stream", "database_url", "consumer", "batch_size", "block_ms",
                           "claim_idle_ms", "lost_after_s", "retention_days", "log_level"))
    settings = settings_from(parser.parse_args(argv))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_ingest(settings)


if __name__ == "__main__":
    sys.exit(main())
