"""``python -m kelp.loadtest PROFILE [flags]`` (the same as ``kelp loadtest``)."""

from __future__ import annotations

import sys

from kelp.loadtest.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
