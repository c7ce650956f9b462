"""Imported first by the servers' entry points (``python -m broker``, ``python -m gateway``).

kio imports hypothesis whenever it is installed, only to give its types test strategies. In a
developer's or CI's environment that pulls hypothesis and pytest into every broker and gateway:
0.2-0.5 s of a server's one-second start here, for nothing a server uses. Marked absent,
hypothesis is skipped by kio as it is where it is not installed. A process that has already
imported it (a test running a server in its own process) keeps it.
"""

import sys

sys.modules.setdefault("hypothesis", None)  # type: ignore[arg-type]
