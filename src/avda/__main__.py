"""``python -m avda``: the ``avda`` command, where its script is not on ``PATH``."""

from avda.cli import entry

if __name__ == "__main__":
    entry()
