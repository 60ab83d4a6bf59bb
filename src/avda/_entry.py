"""The ``avda`` console script, light enough to take SIGTERM from its first line.

A batch scheduler's SIGTERM (SLURM/PBS at a time limit, ``scancel``) can come while Python starts
avda, before :func:`avda.cli.main` sets its handler: Python's default ended the process on the
spot (exit -15) without a word. This module imports nothing of avda's, so the handler it sets
is in place before the command line's imports; ``main`` takes over from it.
"""

from __future__ import annotations

import _signal  # signal's C half: the module itself imports enum (tens of ms before the handler)
import os
import sys

# said by the console script when a SIGTERM comes before the command has begun
STARTING_LINE = b"terminated (SIGTERM) while avda was starting: nothing was started; run it again\n"
# said for Ctrl-C (SIGINT) before the command has begun
INTERRUPTED_LINE = b"interrupted while avda was starting: nothing was started; run it again\n"


def starting(signum, frame) -> None:
    """SIGTERM before the command began: nothing to clean up, so the line and exit 143 at once
    (a handler that raised would leave a half-imported module and a traceback)."""
    os.write(2, STARTING_LINE)
    os._exit(128 + _signal.SIGTERM)


def entry() -> None:
    """``avda``: :func:`avda.cli.main` with SIGTERM handled from the start; once the command
    has ended, a SIGTERM while the process exits is ignored (``main`` sets that) and its exit
    code stands."""
    if _signal.getsignal(_signal.SIGTERM) == _signal.SIG_DFL:
        _signal.signal(_signal.SIGTERM, starting)
    try:
        from avda.cli import main
    except KeyboardInterrupt:  # Ctrl-C in the command line's imports: a traceback, exit -2
        os.write(2, INTERRUPTED_LINE)
        os._exit(130)

    sys.exit(main())
