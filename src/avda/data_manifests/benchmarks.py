"""The benchmark registry: real annotation files -> one validated manifest.

Each benchmark module registers a builder::

    @register("epic55-mmsada")
    def build(annotations: Path, *, fps: float = EPIC_FRAME_RATE) -> ManifestBuild: ...

Builders take the annotations folder plus keyword-only options (``--option key=value`` on the
command line, converted by the builder's type hints) and return a :class:`ManifestBuild`: the
manifest, the class-name tables, the per-reason counts of rows dropped on purpose, and the
benchmark's domains and named settings. :func:`build_manifest` is the command-ready entry point
behind ``avda manifest build``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from avda._io import atomic_write_together
from avda.data_manifests import schema
from avda.data_manifests.settings import Setting, resolve_setting
from avda.errors import ConfigError, ManifestError
from avda.registry import Registry, unknown_name_message

logger = logging.getLogger(__name__)

Builder = Callable[..., "ManifestBuild"]
BENCHMARKS: Registry[Builder] = Registry("benchmark")
BUILD_INFO_SUFFIX = ".build.json"


def register(name: str) -> Callable[[Builder], Builder]:
    """Register a benchmark builder under ``name`` (a duplicate name is an error)."""
    return BENCHMARKS.register(name)


@dataclasses.dataclass(frozen=True)
class ManifestBuild:
    """What building a benchmark produced.

    ``classes`` maps a manifest class column (``verb_class``, ``noun_class``, ``labels``) to its
    class names indexed by id (the full table, including classes absent from the files);
    ``dropped`` maps a reason to the number of source rows removed for it; ``domains`` maps a
    domain name to what it is; ``settings`` are the benchmark's named DA settings.
    """

    benchmark: str
    manifest: pd.DataFrame
    classes: dict[str, tuple[str, ...]]
    dropped: dict[str, int]
    domains: dict[str, str]
    settings: dict[str, Setting]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def num_classes(self, column: str) -> int:
        """Size of the class table of ``column`` (not the largest id present)."""
        if column not in self.classes:
            raise ConfigError(
                f"{self.benchmark} has no class table for {column!r}; "
                f"it has {', '.join(self.classes) or 'none'}"
            )
        return len(self.classes[column])

    def restrict(self, setting: Setting) -> ManifestBuild:
        """The same build with only the rows of the setting's domains."""
        setting.check_domains(self.manifest["domain"].unique())
        keep = self.manifest["domain"].isin(setting.domains)
        return dataclasses.replace(
            self,
            manifest=self.manifest[keep].reset_index(drop=True),
            domains={k: v for k, v in self.domains.items() if k in setting.domains},
            settings={
                name: s
                for name, s in self.settings.items()
                if set(s.domains) <= set(setting.domains)
            },
            options={**self.options, "setting": setting.name},
        )

    def summary(self) -> str:
        """One paragraph for logs: rows, domains, classes, dropped rows per reason."""
        lines = [f"{self.benchmark}: {len(self.manifest)} segments"]
        counts = self.manifest.groupby(["domain", "split"], observed=True).size()
        lines.append(
            "  "
            + ", ".join(f"{domain}/{split} {count}" for (domain, split), count in counts.items())
        )
        for column, names in self.classes.items():
            lines.append(f"  {column}: {len(names)} classes")
        if self.dropped:
            lines.append(
                "  dropped: "
                + ", ".join(f"{count} {reason}" for reason, count in self.dropped.items())
            )
        else:
            lines.append("  dropped: none")
        return "\n".join(lines)

    def info(self) -> dict[str, Any]:
        """JSON-ready description written next to the manifest (``<manifest>.build.json``)."""
        return {
            "benchmark": self.benchmark,
            "options": {k: _plain(v) for k, v in self.options.items()},
            "sources": list(self.sources),
            "rows": len(self.manifest),
            "classes": {column: list(names) for column, names in self.classes.items()},
            "dropped": dict(self.dropped),
            "domains": dict(self.domains),
            "settings": {
                name: {"source": list(s.source_domains), "target": list(s.target_domains)}
                for name, s in self.settings.items()
            },
            "fingerprint": schema.fingerprint(self.manifest),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def build_info_path(manifest_path: str | Path) -> Path:
    """``epic100.manifest.csv`` -> ``epic100.manifest.csv.build.json``."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.name + BUILD_INFO_SUFFIX)


def read_build_info(manifest_path: str | Path) -> dict[str, Any] | None:
    """The build description next to a manifest, or None when there is none."""
    path = build_info_path(manifest_path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(
            f"{path} cannot be read ({exc}); delete it or rebuild the manifest"
        ) from exc


SETTING_DOMAINS = "domains"
"""A builder's keyword-only parameter that is no ``--option``: :func:`build_manifest` gives it
the domains of the setting asked for (``--setting``, ``--source``/``--target``), and a builder
that takes it reads only those domains' files (epic55-mmsada: 4 of its 6 pickles for D1-D2),
with the checks and rows a full build has for them."""


def _parameters(benchmark: str) -> list[str]:
    builder = BENCHMARKS.get(benchmark)
    return [
        p.name
        for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]


def option_names(benchmark: str) -> list[str]:
    """The builder's ``--option`` names."""
    return [name for name in _parameters(benchmark) if name != SETTING_DOMAINS]


def parse_options(benchmark: str, assignments: Iterable[str]) -> dict[str, Any]:
    """``["unit=videos", "participants=P01,P08"]`` -> typed keyword arguments of the builder."""
    builder = BENCHMARKS.get(benchmark)
    hints = typing.get_type_hints(builder)
    valid = option_names(benchmark)
    options: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--option expects key=value, got {item!r}")
        key, raw = (part.strip() for part in item.split("=", 1))
        if key not in valid:
            raise ConfigError(
                unknown_name_message(f"{benchmark} option", key, valid)
                if valid
                else f"benchmark {benchmark!r} takes no options (got {key!r})"
            )
        options[key] = convert_option(f"{benchmark} option {key}", raw, hints[key])
    return options


def convert_option(where: str, raw: str, hint: Any) -> Any:
    """Convert one command-line string to the builder parameter's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("", "none") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert_option(where, raw, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot read {raw!r} as {hint}")
    if origin is typing.Literal:
        if raw not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, args))}, got {raw!r}")
        return raw
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if origin is dict or hint is dict:
        return parse_mapping(where, raw)
    if hint is bool:
        lowered = raw.lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if hint is int or hint is float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
        if hint is int:
            if not value.is_integer():
                raise ConfigError(f"{where}: expected an integer, got {raw!r}")
            return int(value)
        return value
    return raw


def parse_mapping(where: str, raw: str) -> dict[str, str]:
    """``"uid=clip_id,video_id=youtube_id"`` -> ``{"uid": "clip_id", "video_id": "youtube_id"}``."""
    mapping: dict[str, str] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(
                f"{where}: expected name=column pairs separated by commas, got {part!r}"
            )
        key, value = (piece.strip() for piece in part.split("=", 1))
        if not key or not value:
            raise ConfigError(f"{where}: empty name or column in {part!r}")
        mapping[key] = value
    return mapping


def build(benchmark: str, annotations: str | Path, **options: Any) -> ManifestBuild:
    """Build ``benchmark`` from the annotation files in ``annotations``."""
    builder = BENCHMARKS.get(benchmark)
    valid = option_names(benchmark)
    unknown = [key for key in options if key not in _parameters(benchmark)]
    if unknown:
        raise ConfigError(
            "; ".join(unknown_name_message(f"{benchmark} option", key, valid) for key in unknown)
        )
    result = builder(Path(annotations), **options)
    problems = schema.find_problems(result.manifest)
    if problems:
        raise ManifestError(schema.format_problems(f"{benchmark} manifest", problems))
    for reason, count in result.dropped.items():
        logger.warning("%s: dropped %d row(s): %s", benchmark, count, reason)
    return result


def _variant_hint(benchmark: str, options: Mapping[str, Any], asked: set) -> str:
    """The option that builds the domains or setting asked for, where another variant of
    ``benchmark`` has them (UCF-Olympic is the ucf-hmdb benchmark's ``variant=olympic``)."""
    if benchmark != "ucf-hmdb":
        return ""
    olympic = options.get("variant") == "olympic"
    if not olympic and asked & {"olympic", "ucf-olympic", "olympic-ucf"}:
        return "; the UCF-Olympic lists are a variant of this benchmark: add -O variant=olympic"
    if olympic and asked & {"hmdb", "ucf-hmdb", "hmdb-ucf"}:
        return "; variant=olympic builds UCF-Olympic: drop it (or -O variant=small) for HMDB51"
    return ""


def build_manifest(
    benchmark: str,
    annotations: str | Path,
    output: str | Path,
    *,
    source: str | None = None,
    target: str | None = None,
    setting: str | None = None,
    options: Sequence[str] = (),
) -> ManifestBuild:
    """``avda manifest build``: build, optionally keep one setting's domains, write.

    Writes the manifest (CSV or Parquet by suffix) and ``<output>.build.json`` (class tables,
    dropped-row counts, domains, settings, options), each whole or not at all: a build killed
    half-way leaves the old manifest and record, or no manifest; never a shorter table or a
    manifest beside another build's record. Two builds into one output write in turn
    (:func:`~avda.data_manifests.schema.writing`): the last one's pair stays. Returns the
    build.
    """
    parsed = parse_options(benchmark, options)
    if setting is not None and "->" not in setting.replace("→", "->"):
        resolve_setting(setting=setting)  # a name no benchmark has: said before the parse
    asked = source is not None or target is not None or setting is not None
    if asked and SETTING_DOMAINS in _parameters(benchmark):
        with contextlib.suppress(ConfigError):  # said after the build, naming its domains
            chosen = resolve_setting(source=source, target=target, setting=setting)
            parsed[SETTING_DOMAINS] = chosen.domains
    result = build(benchmark, annotations, **parsed)
    if asked:
        try:
            chosen = resolve_setting(
                source=source,
                target=target,
                setting=setting,
                known_domains=result.manifest["domain"].unique(),
                named=result.settings,
            )
        except ConfigError as error:
            asked = {setting, *(source or "").split(","), *(target or "").split(",")}
            raise ConfigError(f"{error}{_variant_hint(benchmark, parsed, asked)}") from None
        result = result.restrict(chosen)
    output = Path(output)
    info_text = json.dumps(result.info(), indent=2) + "\n"
    info = build_info_path(output)
    with schema.writing(output, info):  # another build into ``output`` waits its turn
        # both whole before either is renamed into place, the manifest last: a kill leaves
        # the old pair, or no manifest (rerun the build), never a manifest beside another
        # build's record (its class tables)
        atomic_write_together(
            {
                output: lambda tmp: schema.write_partial(result.manifest, output, tmp),
                info: lambda tmp: tmp.write_text(info_text, encoding="utf-8"),
            },
            {info: schema.partial_path(info), output: schema.partial_path(output)},
        )
    logger.debug("%s\nwrote %s", result.summary(), output)  # the CLI prints it on stdout
    return result
