"""``python -m avda``: the ``avda`` command, where its script is not on ``PATH``."""

from avda._entry import entry

if __name__ == "__main__":
    entry()
