"""The ``avda sweep`` spec: YAML -> :class:`SweepSpec`, every problem reported at once with its
line (``docs/sweep.md`` documents the keys). :mod:`avda.sweep.run` plans and runs it."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import yaml

from avda import safe_yaml
from avda.data_manifests.settings import NAMED_SETTINGS, SETTING_GROUPS, Setting
from avda.errors import AvdaError, ConfigError
from avda.paths import RUNS_OUTPUT, check_output_folder
from avda.registry import unknown_name_message
from avda.safe_yaml import MAX_YAML_BYTES
from avda.wording import keywords

CLUSTER_KINDS = ("local", "slurm", "pbs")

TOP_KEYS = (
    "cache",
    "caches",
    "protocol",
    "heads",
    "settings",
    "seeds",
    "out",
    "device",
    "retries",
    "cluster",
    "published",
)
HEAD_KEYS = ("name", "label")
CLUSTER_KEYS = (
    "kind",
    "workers",
    "memory",
    "cores",
    "processes",
    "gpus",
    "walltime",
    "queue",
    "account",
    "interface",
    "local_directory",
    "log_directory",
    "job_extra_directives",
    "job_script_prologue",
    "worker_timeout",
    "queue_timeout",
)
# `avda train`'s options that the training code names in its errors and warnings, and the keys
# of a spec that set them (:func:`spec_words`): a head's fields (``--set lr=0.1`` is ``lr: 0.1``
# in its entry, ``--epochs`` its ``epochs``), ``seeds``, ``out``, a setting's ``source`` and
# ``target``. ``--config`` and a command to run (``avda extract --recipe cia``) stay.
SPEC_KEYS = {
    "set": "head field",
    "set=": "",
    "epochs": "epochs",
    "seed": "seeds",
    "o": "out",
    "out": "out",
    "cache": "cache",
    "source": "source",
    "target": "target",
    "device": "device",
    "protocol": "protocol",
}
DEFAULT_WORKER_TIMEOUT = 300.0
"""Seconds ``avda sweep`` waits for the first Dask worker to join before it gives up."""
MAX_RUNS_ENV = "AVDA_MAX_RUNS"
DEFAULT_MAX_RUNS = 10_000
"""Most runs (caches x heads x settings x seeds) a spec may expand to, unless ``$AVDA_MAX_RUNS``
says otherwise; the seed count and the local/cluster worker count are bounded by it too."""
MAX_RETRIES = 100
"""Most ``retries`` a spec may ask for (each failed task is run again up to that many times)."""
MAX_PROCESSES = 256
"""Most ``cluster.processes`` (worker processes per cluster job)."""
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{2}){0,2}$")


def spec_words(message: str) -> str:
    """A message of the training code in a spec's words (:data:`SPEC_KEYS`): what a sweep's
    runs log and record (``sweep-warnings.log``, ``sweep-failures.csv``, ``sweep.json``, the
    summary) names the keys its spec has, not `avda train`'s options: ``leave epochs unset``,
    ``modalities: [rgb] leaves audio out``."""
    return keywords(message, SPEC_KEYS, yaml=True)


# ------------------------------------------------------------------------------ the spec
@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """One method of the sweep: a registered head, its table label and its config overrides."""

    name: str
    label: str
    overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """Where the tasks run. ``workers``: local worker processes, or jobs on SLURM/PBS."""

    kind: str = "local"
    workers: int | None = None
    memory: str | None = None
    cores: int | None = None
    processes: int = 1
    gpus: int = 0
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    interface: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT  # seconds until the first worker joins
    # seconds, in all, to wait for jobs the queue (squeue/qstat) shows pending; None: no limit
    queue_timeout: float | None = None


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    caches: dict[str, Path]
    heads: tuple[HeadSpec, ...]
    settings: tuple[Setting, ...]
    seeds: tuple[int, ...]
    out: Path | None = None
    device: str = "auto"
    retries: int = 2
    cluster: ClusterSpec = ClusterSpec()
    source: str = "<spec>"
    protocol: str | None = None  # every head trained as this protocol says (avda.protocols)
    published: dict[str, Any] | None = None  # the paper's numbers: {source:, rows: {...}}


class _Problems:
    """Collects every problem of a spec, each with its path in the file (and line when known)."""

    def __init__(self, source: str, lines: dict[tuple, int]) -> None:
        self.source = source
        self.lines = lines
        self.items: list[tuple[int, str]] = []

    def add(self, path: tuple, message: str) -> None:
        line = self.lines.get(path)
        where = f"{self.source}:{line}" if line else self.source
        self.items.append((line or 0, f"{where}: {_path_text(path) or '(top level)'}: {message}"))

    def refuse(self, path: tuple, message: str) -> NoReturn:
        """Raise at once, in one line: a limit is exceeded (checked before the slow checks)."""
        line = self.lines.get(path)
        where = f"{self.source}:{line}" if line else self.source
        raise ConfigError(f"{where}: {_path_text(path) or '(top level)'}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            count = len(self.items)
            ordered = [text for _, text in sorted(self.items, key=lambda item: item[0])]
            raise ConfigError(
                f"{self.source}: {count} problem{'s' if count > 1 else ''} in the sweep spec "
                "(see docs/sweep.md):\n  " + "\n  ".join(ordered)
            )


def _path_text(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _node_lines(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, int]:
    """1-based line of every key path in a composed YAML document."""
    if node is None:
        return {}
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            lines.update(_node_lines(value_node, (*path, key_node.value)))
            lines[(*path, key_node.value)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_node_lines(item, (*path, index)))
    return lines


def load_spec(path: str | Path, *, open_caches: bool = True, out_given: bool = False) -> SweepSpec:
    """Read and validate a sweep spec; every problem is reported at once, with its path.

    ``open_caches=False`` (``avda sweep --check``) checks everything but the caches that do not
    exist (they need not yet: an example spec before its features are extracted); the settings'
    domains are checked against those that do. ``out_given`` (``--out``): the spec's ``out:``
    is replaced, so not checked as a folder to write."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"sweep spec {path} is a folder; give the spec's YAML file")
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} does not exist; see docs/sweep.md for the format")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(
            f"sweep spec {path} is larger than {MAX_YAML_BYTES >> 20} MiB; avda refuses it "
            "(a spec is a few KB)"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"sweep spec {path} cannot be read: {error}") from None
    data, node = safe_yaml.load_document(text, source=str(path))
    lines = _node_lines(node)
    return parse_spec(
        data,
        source=str(path),
        base=path.parent,
        lines=lines,
        open_caches=open_caches,
        out_given=out_given,
    )


def parse_spec(
    data: Any,
    *,
    source: str = "<spec>",
    base: str | Path = ".",
    lines: dict[tuple, int] | None = None,
    open_caches: bool = True,
    out_given: bool = False,
) -> SweepSpec:
    """Validate a spec given as plain data (what YAML loads); relative paths are under ``base``;
    ``out_given``: as :func:`load_spec`."""
    from avda.train import heads as heads_lib

    problems = _Problems(source, lines or {})
    base = Path(base)
    if not isinstance(data, dict):
        problems.add((), "expected a mapping with keys cache, heads, settings, seeds...")
        problems.raise_if_any()
    for key in data:
        if key not in TOP_KEYS:
            problems.add((key,), unknown_name_message("key", key, TOP_KEYS))

    max_runs = max_runs_allowed()
    seeds = _parse_seeds(data.get("seeds", [0]), problems, max_runs)
    caches = _parse_caches(data, base, problems)
    # --check (open_caches False): the caches that exist yet still name their domains
    opened = {n: p for n, p in caches.items() if open_caches or Path(p).exists()}
    segments = _cache_segments(opened, problems)
    domains = {name: set(table["domain"].dropna().astype(str)) for name, table in segments.items()}
    protocol = _parse_protocol(data.get("protocol"), problems)
    heads = _parse_heads(data.get("heads"), heads_lib, problems, protocol)
    settings_value = data.get("settings")
    if settings_value is None and protocol is not None and protocol.settings:
        settings_value = list(protocol.settings)  # the protocol's table
    settings = _parse_settings(settings_value, domains, problems, several=len(caches) > 1)
    published = _parse_published(data.get("published"), problems)
    if published is not None and settings:
        known = {d for found in domains.values() for d in found}
        metrics = _published_metrics(protocol, segments)
        _check_published_keys(published["rows"], settings, known, metrics, problems)
    out = data.get("out")
    if isinstance(out, str):  # out: ~/runs is in the home folder, not a folder named ~ here
        out = os.path.expanduser(out)
    if out is not None and not isinstance(out, str):
        problems.add(("out",), f"expected a folder path, got {out!r}")
    elif out is not None and not out_given:  # out: runs.zarr (docs/cli.md, "Output paths")
        typed = os.path.join(base, out)  # out: x.json/ keeps its slash, a folder
        try:
            check_output_folder(typed, "out:", *RUNS_OUTPUT)
        except ConfigError as exc:
            problems.add(("out",), str(exc).removeprefix(f"out: {typed} "))
    device = data.get("device", "auto")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        problems.add(("device",), f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    retries = data.get("retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        problems.add(("retries",), f"expected an integer >= 0, got {retries!r}")
    elif retries > MAX_RETRIES:
        problems.add(("retries",), f"at most {MAX_RETRIES} retries, got {retries}")
    cluster = _parse_cluster(data.get("cluster", {}), problems, max_runs)
    for key in ("local_directory", "log_directory"):  # relative to the spec, as cache and out
        folder = getattr(cluster, key)
        if folder is not None:  # absolute: PBS jobs start in $HOME, a worker elsewhere
            where = os.path.abspath(base / Path(folder).expanduser())
            cluster = dataclasses.replace(cluster, **{key: where})
    runs = len(caches) * len(heads) * len(settings) * len(seeds)
    if runs > max_runs:
        problems.refuse(
            (),
            f"the spec expands to {runs:,} runs ({len(caches)} cache(s) x {len(heads)} head(s) "
            f"x {len(settings)} setting(s) x {len(seeds)} seed(s)), more than the limit of "
            f"{max_runs:,}; {_RAISE_HINT}",
        )
    problems.raise_if_any()
    return SweepSpec(
        caches=caches,
        heads=tuple(heads),
        settings=tuple(settings),
        seeds=tuple(seeds),
        out=(base / out) if isinstance(out, str) else None,
        device=device,
        retries=retries,
        cluster=cluster,
        source=source,
        protocol=protocol.name if protocol is not None else None,
        published=published,
    )


def _parse_protocol(value: Any, problems: _Problems):
    from avda import protocols

    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(("protocol",), f"expected a protocol name, got {_short(value)}")
        return None
    try:
        return protocols.get(value)
    except ConfigError as error:
        problems.add(("protocol",), str(error))
        return None


def _parse_published(value: Any, problems: _Problems) -> dict[str, Any] | None:
    """``published: {source: "Table 1 of ...", set: target_test, rows: {label: {setting or
    column: number}}}``; ``set`` (optional): the evaluation set the numbers were measured on,
    where it is not the one ``avda evaluate --set auto`` scores."""
    from avda.evaluate.tables import SET_ORDER

    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add(("published",), "expected a mapping with source: and rows:")
        return None
    keys = ("source", "set", "rows")
    for key in value:
        if key not in keys:
            problems.add(("published", key), unknown_name_message("key", key, keys))
    if not isinstance(value.get("source"), str) or not value.get("source"):
        problems.add(("published", "source"), "expected where the numbers come from (a table)")
    measured = value.get("set")
    if measured is not None and measured not in SET_ORDER:
        problems.add(("published", "set"), unknown_name_message("set", measured, SET_ORDER))
    rows = value.get("rows")
    if not isinstance(rows, dict) or not rows:
        problems.add(("published", "rows"), "expected a mapping of row label: {column: number}")
        return None
    for label, cells in rows.items():
        path = ("published", "rows", label)
        if not isinstance(cells, dict) or not cells:
            problems.add(path, "expected a mapping of setting (or column) to a number in %")
            continue
        for column, number in cells.items():
            if number is None:
                continue  # not reported by the paper
            if isinstance(number, bool) or not isinstance(number, int | float):
                problems.add((*path, column), f"expected a number in %, got {_short(number)}")
            elif not 0 <= number <= 100:
                problems.add((*path, column), f"expected a percentage in [0, 100], got {number}")
    return {
        "source": value.get("source"),
        **({"set": measured} if measured is not None else {}),
        "rows": rows,
    }


def _check_published_keys(
    rows: dict[Any, Any],
    settings: list[Setting],
    known: set[str],
    metrics: dict[str, str],
    problems: _Problems,
) -> None:
    """Each published cell's key names a setting of the spec (as ``settings:`` or its column
    ``S→T``), ``Mean``, or a paper's setting the spec does not run whose domains avda knows
    (its cells make the published mean comparable); optionally followed by a metric column of
    the table (``charades-ego mAP-authors``), which may also stand alone (``verb top-1``):
    ``metrics``, from :func:`_published_metrics`. Another key, a typo such as
    ``sourc->target`` or ``vreb top-1``, was dropped from the table without a word; so was a
    typo that made another of the paper's settings of the spec's own (``D3-D1`` for
    ``D1-D3``): a row with a setting the spec does not run that lacks one the spec runs."""
    runs = {(s.source_domains, s.target_domains) for s in settings}
    # the domains of the caches, of the spec's settings and of every named setting
    known = known | {d for s in (*settings, *NAMED_SETTINGS.values()) for d in s.domains}
    valid = ["Mean"]
    for setting in settings:
        valid += [
            setting.name,
            f"{','.join(setting.source_domains)}→{','.join(setting.target_domains)}",
        ]
    for label, cells in rows.items():
        if not isinstance(cells, dict):
            continue
        given: set[tuple] = set()  # the spec's settings the row has a key of (a null too)
        others = []  # the keys of paper settings the spec does not run
        for key in cells:
            path = ("published", "rows", label, key)
            first, _, rest = str(key).partition(" ")
            shaped, setting = _published_setting(first)
            if str(key) in metrics:
                continue  # a metric column alone, e.g. "verb top-1" (EPIC-100, one setting)
            if rest and rest not in metrics:  # the words after a setting or Mean, or the key
                word = rest if shaped or first == "Mean" else str(key)
                problems.add(path, _metric_problem(word, label, metrics))
                continue
            if first == "Mean":
                continue
            if setting is not None:
                pair = (setting.source_domains, setting.target_domains)
                if pair in runs:
                    given.add(pair)
                    continue
                if all(d in known for d in setting.domains):
                    others.append(key)
                    continue
            problems.add(
                path,
                f"{unknown_name_message('setting or column', key, dict.fromkeys(valid))} "
                f"(row {label!r}: its number would be left out of the table)",
            )
        lacking = [s for s in settings if (s.source_domains, s.target_domains) not in given]
        for key in others if lacking else ():
            problems.add(
                ("published", "rows", label, key),
                f"{key!r} is a setting the spec does not run (its number counts only in the "
                f"published Mean), and row {label!r} has no number for the spec's "
                f"{', '.join(s.name for s in lacking)}: a typo of one of them? (where the "
                f"paper reports none, write it with null: {lacking[0].name}: null)",
            )


def _published_metrics(protocol: Any, segments: dict[str, Any]) -> dict[str, str]:
    """The metric columns a published key may name (after a setting or ``Mean``, or alone)
    and why: EPIC-100's ``verb top-1`` ... ``action top-5`` where the table may be the epic100
    layout (the protocol's, or ``--layout auto`` on runs with verb and noun: not where every
    cache avda opened lacks one), each metric of a protocol whose table scores several
    (``mAP-present``, ``mAP-authors``)."""
    from avda.evaluate.aggregate import EPIC100_COLUMNS

    found: dict[str, str] = {}
    epic100 = protocol is not None and protocol.evaluation.layout == "epic100"
    labelled = [
        all(c in table and table[c].notna().any() for c in ("verb_class", "noun_class"))
        for table in segments.values()
    ]
    if epic100 or not labelled or any(labelled):
        for task, k in EPIC100_COLUMNS:
            found[f"{task} top-{k}"] = "EPIC-100's columns"
    metrics = protocol.evaluation.metrics if protocol is not None else ()
    if len(metrics) > 1 and not epic100:
        for metric in metrics:
            found[metric] = f"protocol {protocol.name}'s metrics"
    return found


def _metric_problem(word: str, label: Any, metrics: dict[str, str]) -> str:
    """The problem of a published key whose metric column ``word`` no table of the spec has."""
    if not metrics:
        return (
            f"{word!r} is no metric column: the table has one number per setting (write the "
            f"setting alone; row {label!r}: its number would be left out of the table)"
        )
    kinds = " and ".join(dict.fromkeys(metrics.values()))
    return (
        f"{unknown_name_message('metric column', word, metrics)} ({kinds}; row {label!r}: its "
        "number would be left out of the table)"
    )


def _published_setting(text: str) -> tuple[bool, Setting | None]:
    """Whether a published key's first word is written as a setting, and that setting (None
    where it is not one: ``D1-D1``)."""
    if text in NAMED_SETTINGS:
        return True, NAMED_SETTINGS[text]
    text = text.replace("→", "->")
    for arrow in ("->", "-"):
        if arrow in text and text.count(arrow) == 1:
            left, right = text.split(arrow)
            try:
                return True, Setting(_domain_list(left), _domain_list(right))
            except ConfigError:
                return True, None
    return False, None


def _parse_caches(data: dict, base: Path, problems: _Problems) -> dict[str, Path]:
    if ("cache" in data) == ("caches" in data):
        problems.add(("cache",), "give exactly one of cache: PATH or caches: {name: PATH, ...}")
        return {}
    if "cache" in data:
        raw = {"cache": data["cache"]}
        paths = {"cache": ("cache",)}
    else:
        if not isinstance(data["caches"], dict) or not data["caches"]:
            problems.add(("caches",), "expected a mapping of names to cache paths")
            return {}
        raw = data["caches"]
        paths = {name: ("caches", name) for name in raw}
    caches = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            problems.add(paths[name], f"expected the path of a .zarr cache, got {value!r}")
        elif not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(name)):
            problems.add(paths[name], "cache names may use letters, digits and _.+- only")
        else:
            caches[str(name)] = base / os.path.expanduser(value)  # ~/c.zarr: the home's
    return caches


def _cache_segments(caches: dict[str, Path], problems: _Problems) -> dict[str, Any]:
    """The segment table of each cache that opens (its domains, its label columns)."""
    from avda.cache import open_cache

    segments = {}
    for name, path in caches.items():
        key = ("cache",) if name == "cache" else ("caches", name)
        try:
            segments[name] = open_cache(path).segments
        except AvdaError as error:
            problems.add(key, str(error))
        except (OSError, FileNotFoundError) as error:
            problems.add(key, f"cannot open cache {path}: {error}; run `avda extract` first")
    return segments


def _parse_heads(
    value: Any, heads_lib: Any, problems: _Problems, protocol: Any = None
) -> list[HeadSpec]:
    if not isinstance(value, list) or not value:
        problems.add(("heads",), "expected a list of heads, e.g. [source-only, {name: dann}]")
        return []
    heads: list[HeadSpec] = []
    labels: dict[str, int] = {}
    for index, item in enumerate(value):
        path = ("heads", index)
        entry = {"name": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.add(path, "expected a head name or a mapping with name: HEAD")
            continue
        name = entry["name"]
        where = (*path, "name") if isinstance(item, dict) else path
        runs_head = name
        if protocol is not None:  # a method of the protocol (its baselines included)
            try:
                runs_head = protocol.head_for(name)
            except ConfigError as error:
                problems.add(where, str(error))
                continue
        elif name not in heads_lib.HEADS:
            problems.add(where, unknown_name_message("head", name, heads_lib.names()))
            continue
        config_class = heads_lib.config_class(runs_head)
        fields = config_class.field_names()
        overrides = {}
        for key, setting in entry.items():
            if key in HEAD_KEYS:
                continue
            if key not in fields:
                valid = [*HEAD_KEYS, *fields]
                problems.add((*path, key), unknown_name_message(f"{name} key", key, valid))
                continue
            try:
                config_class.from_dict({key: setting})
            except ConfigError as error:
                prefix = f"{config_class.__name__}.{key}: "
                problems.add((*path, key), str(error).removeprefix(prefix))
                continue
            overrides[key] = setting
        if protocol is not None:
            try:
                protocol.resolve(name, overrides)
            except ConfigError as error:
                problems.add(path, str(error))
                continue
        label = entry.get("label", name)
        folder_name = isinstance(label, str) and re.fullmatch(r"[^/\\\x00]+", label)
        if not folder_name or label in (".", ".."):
            problems.add((*path, "label"), f"expected a name usable as a folder, got {label!r}")
            continue
        if label in labels:
            problems.add(
                (*path, "label"),
                f"label {label!r} is already used by heads[{labels[label]}]; give each a label",
            )
            continue
        labels[label] = index
        heads.append(HeadSpec(name, label, overrides))
    return heads


def _parse_settings(
    value: Any, domains: dict[str, set[str]], problems: _Problems, *, several: bool = False
) -> list[Setting]:
    if not isinstance(value, list) or not value:
        problems.add(("settings",), "expected a list of settings, e.g. [epic55-mmsada]")
        return []
    settings: list[Setting] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        path = ("settings", index)
        try:
            expanded = _expand_setting(item)
        except ConfigError as error:
            problems.add(path, str(error))
            continue
        for setting in expanded:
            for cache, known in domains.items():
                missing = [d for d in setting.domains if d not in known]
                where = f"setting {setting.name}" + (f", cache {cache}" if several else "")
                for domain in missing:
                    message = unknown_name_message("domain", domain, known)
                    problems.add(path, f"{message} ({where})")
            if setting.name not in seen:
                seen.add(setting.name)
                settings.append(setting)
    return settings


def _expand_setting(item: Any) -> tuple[Setting, ...]:
    if isinstance(item, str):
        if item in SETTING_GROUPS:
            return SETTING_GROUPS[item]
        if item in NAMED_SETTINGS:
            return (NAMED_SETTINGS[item],)
        arrow = item.replace("→", "->")
        if "->" in arrow:
            left, right = arrow.split("->", 1)
            return (Setting(_domain_list(left), _domain_list(right)),)
        valid = [*SETTING_GROUPS, *NAMED_SETTINGS, "SOURCE->TARGET"]
        raise ConfigError(unknown_name_message("setting", item, valid))
    if isinstance(item, dict):
        unknown = [k for k in item if k not in ("source", "target", "name")]
        if unknown or "source" not in item or "target" not in item:
            raise ConfigError("expected {source: D1, target: D2} (optionally name:)")
        name = item.get("name", "")
        if not isinstance(name, str) or "/" in name or name in (".", ".."):
            raise ConfigError(f"name: expected a name usable as a folder, got {name!r}")
        return (Setting(_domain_list(item["source"]), _domain_list(item["target"]), name),)
    raise ConfigError(f"expected a setting name or {{source:, target:}}, got {item!r}")


def _domain_list(value: Any) -> tuple[str, ...]:
    parts = value if isinstance(value, list) else str(value).split(",")
    names = tuple(str(part).strip() for part in parts)
    if not names or any(not name for name in names):
        raise ConfigError(f"expected domain names (a list or 'D1,D2'), got {value!r}")
    return names


_RAISE_HINT = f"if the sweep is genuine, raise it with {MAX_RUNS_ENV}=N (see docs/sweep.md)"


def max_runs_allowed() -> int:
    """``$AVDA_MAX_RUNS`` (a positive integer), else :data:`DEFAULT_MAX_RUNS`."""
    raw = os.environ.get(MAX_RUNS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_RUNS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_RUNS_ENV}={raw!r} is not a positive integer; unset it or fix it")
    return value


def _parse_seeds(value: Any, problems: _Problems, max_runs: int) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            problems.add(("seeds",), f"a seed count must be at least 1, got {value}")
            return []
        if value > max_runs:
            problems.refuse(
                ("seeds",),
                f"{value:,} seeds is more than the limit of {max_runs:,} runs; {_RAISE_HINT}",
            )
        return list(range(value))
    if not isinstance(value, list) or not value:
        problems.add(
            ("seeds",), f"expected a list of integer seeds or a count, got {_short(value)}"
        )
        return []
    if len(value) > max_runs:
        problems.refuse(
            ("seeds",),
            f"{len(value):,} seeds is more than the limit of {max_runs:,} runs; {_RAISE_HINT}",
        )
    seeds: list[int] = []
    seen: set[int] = set()
    for index, seed in enumerate(value):
        if isinstance(seed, bool) or not isinstance(seed, int):
            problems.add(("seeds", index), f"expected an integer, got {_short(seed)}")
        elif seed in seen:
            problems.add(("seeds", index), f"seed {seed} is listed twice")
        else:
            seeds.append(seed)
            seen.add(seed)
    return seeds


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a spec value quoted in an error)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_cluster(value: Any, problems: _Problems, max_runs: int) -> ClusterSpec:
    if not isinstance(value, dict):
        problems.add(("cluster",), "expected a mapping (kind, workers, cores, memory...)")
        return ClusterSpec()
    values: dict[str, Any] = {}
    for key, item in value.items():
        path = ("cluster", key)
        if key not in CLUSTER_KEYS:
            problems.add(path, unknown_name_message("cluster key", key, CLUSTER_KEYS))
        elif key == "kind":
            if item not in CLUSTER_KINDS:
                problems.add(path, f"expected one of {', '.join(CLUSTER_KINDS)}, got {item!r}")
            else:
                values[key] = item
        elif key in ("workers", "cores", "processes", "gpus"):
            least = 0 if key == "gpus" else 1
            most = {"workers": max_runs, "processes": MAX_PROCESSES}.get(key)
            if isinstance(item, bool) or not isinstance(item, int) or item < least:
                problems.add(path, f"expected an integer >= {least}, got {item!r}")
            elif most is not None and item > most:
                hint = _RAISE_HINT if key == "workers" else "use fewer processes per job"
                problems.refuse(path, f"{item:,} is more than the limit of {most:,}; {hint}")
            else:
                values[key] = item
        elif key in ("worker_timeout", "queue_timeout"):
            if key == "queue_timeout" and item is None:  # no limit, as when not given
                continue
            if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
                problems.add(path, f"expected a number of seconds > 0, got {item!r}")
            else:
                values[key] = float(item)
        elif key == "memory":
            if not _is_size(item):
                problems.add(path, f"expected a size such as 16GB, got {item!r}")
            elif re.fullmatch(r"\s*[\d.]+\s*", str(item)):
                problems.add(path, f"{item!r} has no unit (it would be bytes): write e.g. 16GB")
            else:
                values[key] = str(item)
        elif key == "walltime":
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                hours, rest = divmod(item, 3600)
                problems.add(
                    path,
                    f"expected HH:MM:SS, got the number {item} (YAML reads an unquoted "
                    f"{hours}:{rest // 60:02d}:{rest % 60:02d} as seconds): quote it, walltime: "
                    f'"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"',
                )
            elif not isinstance(item, str) or not _WALLTIME.match(item):
                problems.add(path, f"expected HH:MM:SS (or D-HH:MM:SS), got {item!r}")
            else:
                values[key] = item
        elif key in ("job_extra_directives", "job_script_prologue"):
            if not isinstance(item, list) or not all(isinstance(x, str) for x in item):
                problems.add(path, "expected a list of strings")
            else:
                values[key] = tuple(item)
        elif not isinstance(item, str):
            problems.add(path, f"expected a string, got {item!r}")
        else:
            values[key] = item
    spec = ClusterSpec(**values)
    if spec.kind != "local":
        for key, message in cluster_problems(spec):
            problems.add(("cluster", key) if key in value else ("cluster",), message)
    return spec


def pbs_memory(memory: str) -> str:
    """A spec's memory as PBS reads it: an integer and kb, mb, gb or tb (PBS's units are
    binary). ``32GB`` stays as it is; ``16GiB`` is ``16gb``, ``0.5 TB`` is ``512gb``."""
    text = memory.replace(" ", "")
    found = re.fullmatch(r"(\d+(?:\.\d*)?)([kmgtKMGT])(i?)[bB]", text)
    if found is None:
        raise ConfigError(f"cluster.memory: PBS cannot read {memory!r}; write e.g. 16GB")
    number, unit, binary = found.groups()
    if number.isdigit() and not binary:
        return text
    units = "kmgt"
    amount = float(number) * 1024 ** units.index(unit.lower())  # in kb
    for place in range(len(units) - 1, -1, -1):
        value = amount / 1024**place
        if value >= 1 and value == int(value):
            return f"{int(value)}{units[place]}b"
    return f"{max(1, round(amount))}kb"


def pbs_walltime(walltime: str) -> str:
    """A walltime in any of SLURM's forms as PBS's ``HH:MM:SS``: ``D-HH[:MM[:SS]]`` (days and
    hours: ``1-00:00:00`` is ``24:00:00``), ``MM`` and ``MM:SS`` (minutes: ``90`` is
    ``01:30:00``, which PBS would read as 90 seconds), ``HH:MM:SS`` as it is."""
    days, dash, rest = walltime.partition("-")
    parts = [int(p) for p in (rest if dash else walltime).split(":")]
    if dash:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        hours += int(days) * 24
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:  # minutes[:seconds]
        minutes, seconds = (parts + [0])[:2]
        hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def cluster_problems(spec: ClusterSpec, kind: str | None = None) -> list[tuple[str, str]]:
    """What a SLURM / PBS cluster (``kind``, default the spec's) lacks: ``(key, message)``
    pairs. The spec is checked with its own kind; ``--cluster KIND`` checks it again."""
    kind = kind or spec.kind
    if kind == "local":
        return []
    found = []
    missing = [key for key in ("cores", "memory") if getattr(spec, key) is None]
    if missing:
        found.append(
            (
                missing[0],
                f"cluster kind {kind} needs cluster.{' and cluster.'.join(missing)} (per job, "
                "e.g. cores: 8, memory: 32GB)",
            )
        )
    if kind == "pbs" and spec.memory is not None:
        try:
            pbs_memory(spec.memory)
        except ConfigError as error:
            found.append(("memory", str(error).split(": ", 1)[-1]))
    for directive in spec.job_extra_directives:
        message = foreign_directive(directive, kind)
        if message:
            found.append(("job_extra_directives", message))
            break  # one line: the first one named (--check lists it again once fixed)
    if spec.cores is not None and spec.cores < spec.processes:
        found.append(
            (
                "processes",
                f"{spec.processes} worker processes per job need cluster.cores >= "
                f"{spec.processes} (each gets cores / processes threads), got cores: {spec.cores}",
            )
        )
    return found


SCHEDULERS = {"slurm": ("SLURM", "sbatch", "#SBATCH"), "pbs": ("PBS", "qsub", "#PBS")}
# The spec's keys a scheduler option has a portable form in (avda writes each as the cluster's
# scheduler reads it): SLURM's long options, PBS's -l resources.
_PORTABLE = (
    (r"--(gres|gpus\w*)\b|\bn?gpus\b", "gpus"),
    (r"--partition\b|-p\b", "queue"),
    (r"--account\b", "account"),
    (r"--time\b|\bwalltime\b", "walltime"),
    (r"--mem\b|\bmem\b", "memory"),
    (r"--(cpus-per-task|ntasks)\b|\bncpus\b|\bselect\b", "cores"),
)


def foreign_directive(directive: str, kind: str) -> str:
    """Why ``directive`` (an item of ``cluster.job_extra_directives``) cannot go to ``kind``'s
    scheduler, "" when it can. dask-jobqueue writes each item verbatim after ``#SBATCH `` /
    ``#PBS ``, so a SLURM option (``--gres=gpu:1``, a long option: qsub has none) under PBS, a
    PBS ``-l`` resource or ``-j`` under SLURM (sbatch has neither option), or an item that
    carries a prefix itself, makes a job script the submit command refuses (or misreads).
    Short options both schedulers read (``-p``, ``-N``, ``-m``...) pass: their meaning is the
    user's."""
    if kind not in SCHEDULERS:
        return ""
    name, command, prefix = SCHEDULERS[kind]
    text = directive.strip()
    for other, (other_name, _, other_prefix) in SCHEDULERS.items():
        if text.upper().startswith(other_prefix):
            bare = text[len(other_prefix) :].strip()
            if other == kind:
                return (
                    f"{directive!r}: dask-jobqueue writes the {prefix!r} prefix itself (it would "
                    f"write {prefix + ' ' + text!r}); give it without: {bare!r}"
                )
            return _foreign(directive, other_name, kind, name, command, f"{prefix} {text}")
    if kind == "pbs" and text.startswith("--"):
        return _foreign(directive, "SLURM", kind, name, command, f"{prefix} {text}")
    if kind == "slurm" and re.match(r"-[lj](\s|\w|$)", text):
        return _foreign(directive, "PBS", kind, name, command, f"{prefix} {text}")
    return ""


def _foreign(directive: str, other: str, kind: str, name: str, command: str, line: str) -> str:
    probe = re.sub(r"-l(?=\w)", "-l ", directive)  # -lwalltime=1:00:00: a resource's name
    portable = next((key for pattern, key in _PORTABLE if re.search(pattern, probe)), None)
    fix = f"use cluster.{portable} (avda writes it for each scheduler), " if portable else ""
    return (
        f"{directive!r} is a {other} directive, but the cluster kind is {kind}: {command} "
        f"cannot read the job script's line {line!r}; {fix}write it as {name} reads it, or run "
        f"with --cluster {other.lower()}"
    )


def _is_size(value: Any) -> bool:
    from dask.utils import parse_bytes

    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    try:
        return parse_bytes(value) > 0
    except ValueError:
        return False
