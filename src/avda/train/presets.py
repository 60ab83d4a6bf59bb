"""Named presets for head configs: the settings a paper reports for one benchmark.

A head config with a ``preset`` field resolves it in ``from_dict`` (the path of ``--set`` and
YAML configs): the preset's values are applied first and explicit keys win, so
``{"preset": "ucf-hmdb", "epochs": 10}`` is the U-H recipe with 10 epochs. The resolved values
are what ``to_dict`` (and the run's ``config.yaml``) records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from avda.errors import ConfigError
from avda.registry import unknown_name_message


def with_preset(
    owner: str, presets: Mapping[str, Mapping[str, Any]], values: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``values`` with the fields of ``presets[values["preset"]]`` filled in underneath."""
    values = dict(values or {})
    name = values.get("preset")
    if name is None:
        return values
    if name not in presets:
        raise ConfigError(unknown_name_message(f"{owner} preset", name, presets))
    return {**presets[name], **values}


__all__ = ["with_preset"]
