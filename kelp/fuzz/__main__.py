"""``python -m kelp.fuzz``: see ``kelp.fuzz.cli``."""

import sys

from kelp.fuzz.cli import main

sys.exit(main())
