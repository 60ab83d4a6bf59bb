"""Stage 2: adaptation heads trained on cached features (never imports avda.extract).

The package is callable: ``avda.train(head=..., ...)`` is :func:`avda.api.train`.
"""

from avda._callable import make_callable

make_callable(__name__, "train")
