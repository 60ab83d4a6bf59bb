"""Named fault points of the store writers, for tests that kill or pause a writer on purpose.

A writer calls :func:`checkpoint` at named moments (``avda cache import``: ``after-create``,
``after-segments``, ``after-features``, ``before-record``, ``after-record``; ``avda extract``:
``extract-opened``; any new store: ``store-built``, before it is renamed into place;
``avda cluster``: ``clusters-written``, ``clusters-aside``, before and between the renames of
its new array). Nothing
happens unless the environment variable ``AVDA_FAULT`` names the point:

- ``AVDA_FAULT=exit:<point>``: the process ends at once with ``os._exit(75)`` (no cleanup, no
  ``finally``: as a ``kill -9`` would), so tests drive a kill to an exact phase, not a timing.
- ``AVDA_FAULT=pause:<point>``: the process creates the file ``$AVDA_FAULT_MARKER`` and waits
  (at most 10 minutes) until that file is removed, then goes on: a test holds a writer in the
  middle of its work (with the store locked) and runs a second command against it.

It is a test hook, documented so that nobody is surprised by it; it never changes what a
writer does when ``AVDA_FAULT`` is unset.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "AVDA_FAULT"
MARKER_ENV = "AVDA_FAULT_MARKER"
EXIT_CODE = 75
PAUSE_LIMIT_S = 600.0


def checkpoint(name: str) -> None:
    """Exit or pause here when ``$AVDA_FAULT`` is ``exit:<name>`` or ``pause:<name>``."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action, _, point = spec.partition(":")
    if point != name:
        return
    if action == "exit":
        os._exit(EXIT_CODE)
    if action == "pause":
        marker = Path(os.environ.get(MARKER_ENV) or f"avda-fault-{os.getpid()}")
        marker.write_text(f"{os.getpid()} paused at {name}\n")
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
