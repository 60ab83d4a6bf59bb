"""``--config FILE.yaml`` of ``avda train`` and ``avda extract``.

``avda train --config`` reads the format of the ``RUN/config.yaml`` a run writes, so that a
finished run is trained again from its own folder (``avda train --config RUN/config.yaml -o
NEW``)::

    head: dann                  # avda list heads
    cache: /data/epic.zarr
    source: [D1]                # or "D1,D2"
    target: [D2]
    seed: 0
    head_config: {lr: 0.01}     # fields of the head (avda train --head dann --show-config)

``device`` may be given too. ``avda_version``, ``modalities`` and ``tasks`` are what a run
recorded: accepted and ignored (the run derives them again from the cache and ``head_config``).

``avda extract --config`` reads a mapping of its options (``avda extract --help``), named with
``_`` or ``-``: ``{manifest: m.csv, out: c.zarr, modalities: [rgb, audio], batch_size: 32}``.

Options given on the command line (and ``--set``) override the file's values. Relative paths
in a file are relative to its folder (as in sweep specs). Any other key is one line naming it
and the valid keys. Files are read with :mod:`avda.safe_yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avda import safe_yaml
from avda.errors import ConfigError
from avda.registry import unknown_name_message

TRAIN_KEYS = ("head", "cache", "source", "target", "seed", "device", "head_config", "protocol")
# ``protocol_role``: the method a protocol run trained (``head`` is the head that ran it)
RECORDED_KEYS = ("avda_version", "modalities", "tasks")  # written by a run, derived again


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` (one line naming the file when it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file; give a YAML file (e.g. RUN/config.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path} is not a text (YAML) file") from None
    data = safe_yaml.load(text, source=f"--config {path}")
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"--config {path}: expected a mapping of option: value, got {data!r:.80}")
    return data


def check_keys(
    path: str | Path, data: dict[str, Any], valid: list[str] | tuple[str, ...], kind: str = "key"
) -> None:
    """One line for the first key of ``data`` not in ``valid``."""
    for key in data:
        if key not in valid:
            raise ConfigError(f"--config {path}: {unknown_name_message(kind, key, valid)}")


def comma_list(value: Any) -> Any:
    """A YAML list of names as the comma list an option takes (``[D1, D2]`` -> ``"D1,D2"``)."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return value


def read_train_config(path: str | Path) -> dict[str, Any]:
    """The options of a train config file (see the module docstring), keys checked.

    Returns ``head``, ``cache``, ``source``, ``target``, ``seed``, ``device`` (those present)
    and ``head_config`` (a dict, possibly empty); domains as comma lists.
    """
    data = read_mapping(path)
    check_keys(path, data, [*TRAIN_KEYS, *RECORDED_KEYS, "protocol_role"])
    out = {k: v for k, v in data.items() if k in TRAIN_KEYS}
    if out.get("protocol") and data.get("protocol_role"):  # the method, not the head it ran
        out["head"] = data["protocol_role"]
    head_config = out.get("head_config") or {}
    if not isinstance(head_config, dict):
        raise ConfigError(
            f"--config {path}: head_config must be a mapping of field: value, "
            f"got {head_config!r:.80}"
        )
    out["head_config"] = dict(head_config)
    for key in ("source", "target"):
        if key in out:
            out[key] = comma_list(out[key])
    for key in ("head", "cache", "source", "target", "device", "protocol"):
        if key in out and out[key] is not None and not isinstance(out[key], str):
            raise ConfigError(f"--config {path}: {key} must be a string, got {out[key]!r:.80}")
    if out.get("cache"):  # relative to the file's folder (a run records an absolute path)
        out["cache"] = str(Path(path).parent / out["cache"])
    if "seed" in out and (isinstance(out["seed"], bool) or not isinstance(out["seed"], int)):
        raise ConfigError(f"--config {path}: seed must be an integer, got {out['seed']!r:.80}")
    return out
