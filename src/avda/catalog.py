"""What avda has, one line each: ``avda list heads|backbones|recipes|protocols|settings``.

The lines come from where the things are defined: a head's module docstring (its paper), a
backbone builder's docstring, a sampling recipe's fields, a named setting's domains, a named
protocol's paper and summary (:mod:`avda.protocols`; ``avda train --protocol NAME``).
"""

from __future__ import annotations

import re
import sys

from avda.registry import unknown_name_message

KINDS = ("heads", "backbones", "recipes", "protocols", "settings")


def first_sentence(text: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line, without its reST
    markup (``code`` and :role:`target` read as code and target)."""
    paragraph = (text or "").strip().split("\n\n")[0]
    line = " ".join(paragraph.split())
    line = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", line).replace("``", "")
    match = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.(\s|$)", line)
    return line[: match.start() + 1] if match else line


def _heads() -> list[tuple[str, str]]:
    from avda.train import heads

    out = []
    for name in heads.names():
        cls = heads.HEADS.get(name)
        module = sys.modules.get(cls.__module__)
        out.append((name, first_sentence(getattr(module, "__doc__", None) or cls.__doc__)))
    return out


def _backbones() -> list[tuple[str, str]]:
    from avda.extract import backbones

    return [(n, first_sentence(backbones.BACKBONES.get(n).__doc__)) for n in backbones.names()]


def _recipes() -> list[tuple[str, str]]:
    from avda.extract import sampling

    out = []
    for name in sampling.names():
        r = sampling.get(name)
        step = f" every {r.frame_step}" if getattr(r, "frame_step", 1) > 1 else ""
        line = (
            f"{r.num_clips} clips x {r.num_frames} frames{step}, {r.placement} placement, "
            f"crop {r.crop_size}"
            + (" (mmaction2's floored offset)" if getattr(r, "crop_offset", "") == "floor" else "")
            + f"; audio: {r.audio_windows} windows of {r.audio_seconds:g} s"
        )
        if getattr(r, "spatial", False):
            line += "; spatial maps"
        out.append((name, line))
    return out


def _protocols() -> list[tuple[str, str]]:
    from avda import protocols

    return [
        (p.name, f"{p.paper}: {p.summary}; table: {p.evaluation.describe()}")
        for p in protocols.PROTOCOLS.values()
    ]


def _settings() -> list[tuple[str, str]]:
    from avda.data_manifests.settings import NAMED_SETTINGS

    out = []
    for name, setting in NAMED_SETTINGS.items():
        kind = "domain generalisation" if setting.multi_source else "adaptation"
        out.append(
            (
                name,
                f"{kind}: source {', '.join(setting.source_domains)} -> target "
                f"{', '.join(setting.target_domains)}",
            )
        )
    return out


def entries(kind: str) -> list[tuple[str, str]]:
    """``[(name, one-line description)]`` of ``kind`` (one of :data:`KINDS`)."""
    from avda.errors import ConfigError

    builders = {
        "heads": _heads,
        "backbones": _backbones,
        "recipes": _recipes,
        "protocols": _protocols,
        "settings": _settings,
    }
    if kind not in builders:
        raise ConfigError(unknown_name_message("list", kind, KINDS))
    return builders[kind]()


def format_entries(rows: list[tuple[str, str]]) -> str:
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"{name:<{width}}  {text}".rstrip() for name, text in rows)
