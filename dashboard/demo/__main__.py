"""``python -m dashboard.demo [options]``: the same as ``flowerbed demo [options]``."""

from __future__ import annotations

import sys

from . import main

sys.exit(main(sys.argv[1:]))
