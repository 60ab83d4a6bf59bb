"""``avda sweep``: every (head, setting, seed) training run as a task on Dask distributed.

::

    sweep.yaml -load_spec-> SweepSpec -plan-> [SweepTask] (one run directory each)
                                                   |  complete already? -> skipped
                                                   v  client.submit(run_task, retries=R)
    LocalCluster | Client(tcp://...) | SLURMCluster / PBSCluster (dask-jobqueue)
                                                   |
                                  as_completed --> tqdm, SweepSummary, OUT/sweep.json,
                                                   OUT/sweep-failures.csv when something failed

The spec (YAML, documented in ``docs/sweep.md``)::

    cache: features/epic55_i3d.zarr       # or  caches: {i3d: a.zarr, tbn: b.zarr}
    heads:
      - source-only                        # a head name, or a mapping: name, label, config fields
      - {name: dann, label: DANN, lr: 0.0005, epochs: 40}
    settings: [epic55-mmsada]              # groups, named settings, "D1,D2->D3", {source:, target:}
    seeds: [0, 1, 2]                       # or a count: 3
    out: runs/epic55                       # relative paths are relative to the spec file
    device: auto                           # auto, cpu, cuda, cuda:1
    retries: 2                             # dask retries of a task that raised
    cluster: {kind: local, workers: 4}     # slurm/pbs: cores, memory, walltime, queue, gpus...

Fault tolerance comes from Dask, not from a scheduler of our own: a task whose worker dies is
rescheduled by the Dask scheduler (``distributed.scheduler.allowed-failures``), a task that raises
is retried ``retries`` times, and :func:`avda.train.loop.train` resumes a run from
``checkpoints/last.pt``, so a retried task continues where the killed one stopped. Errors that
retrying cannot fix (an :class:`~avda.errors.AvdaError`: bad config, diverged loss, missing
data) fail the run at once; the other runs go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from avda import runs
from avda.data_manifests.settings import DG_SETTINGS, MMSADA_PAIRS, NAMED_SETTINGS, Setting
from avda.errors import AvdaError, ConfigError
from avda.registry import unknown_name_message

log = logging.getLogger(__name__)

INDEX = "sweep.json"
FAILURES = "sweep-failures.csv"
CLUSTER_KINDS = ("local", "slurm", "pbs")
SETTING_GROUPS: dict[str, tuple[Setting, ...]] = {
    "epic55-mmsada": MMSADA_PAIRS,
    "epic55-dg": DG_SETTINGS,
}
"""Names that stand for several settings: the 6 MM-SADA pairs, the 3 RNA-Net DG settings."""

TOP_KEYS = ("cache", "caches", "heads", "settings", "seeds", "out", "device", "retries", "cluster")
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
)
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{2}){0,2}$")


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


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; every problem is reported at once, with its path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} does not exist; see docs/sweep.md for the format")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        lines = _node_lines(yaml.compose(text))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_spec(data, source=str(path), base=path.parent, lines=lines)


def parse_spec(
    data: Any,
    *,
    source: str = "<spec>",
    base: str | Path = ".",
    lines: dict[tuple, int] | None = None,
) -> SweepSpec:
    """Validate a spec given as plain data (what YAML loads); relative paths are under ``base``."""
    from avda.train import heads as heads_lib

    problems = _Problems(source, lines or {})
    base = Path(base)
    if not isinstance(data, dict):
        problems.add((), "expected a mapping with keys cache, heads, settings, seeds...")
        problems.raise_if_any()
    for key in data:
        if key not in TOP_KEYS:
            problems.add((key,), unknown_name_message("key", key, TOP_KEYS))

    caches = _parse_caches(data, base, problems)
    domains = _cache_domains(caches, problems)
    heads = _parse_heads(data.get("heads"), heads_lib, problems)
    settings = _parse_settings(data.get("settings"), domains, problems)
    seeds = _parse_seeds(data.get("seeds", [0]), problems)
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        problems.add(("out",), f"expected a folder path, got {out!r}")
    device = data.get("device", "auto")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        problems.add(("device",), f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    retries = data.get("retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        problems.add(("retries",), f"expected an integer >= 0, got {retries!r}")
    cluster = _parse_cluster(data.get("cluster", {}), problems)
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
    )


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
            caches[str(name)] = base / value
    return caches


def _cache_domains(caches: dict[str, Path], problems: _Problems) -> dict[str, set[str]]:
    from avda.cache import open_cache

    domains = {}
    for name, path in caches.items():
        key = ("cache",) if name == "cache" else ("caches", name)
        try:
            store = open_cache(path)
            domains[name] = set(store.segments["domain"].dropna().astype(str))
        except AvdaError as error:
            problems.add(key, str(error))
        except (OSError, FileNotFoundError) as error:
            problems.add(key, f"cannot open cache {path}: {error}; run `avda extract` first")
    return domains


def _parse_heads(value: Any, heads_lib: Any, problems: _Problems) -> list[HeadSpec]:
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
        if name not in heads_lib.HEADS:
            where = (*path, "name") if isinstance(item, dict) else path
            problems.add(where, unknown_name_message("head", name, heads_lib.names()))
            continue
        config_class = heads_lib.config_class(name)
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


def _parse_settings(value: Any, domains: dict[str, set[str]], problems: _Problems) -> list[Setting]:
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
                where = f"setting {setting.name}" + (f", cache {cache}" if len(domains) > 1 else "")
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


def _parse_seeds(value: Any, problems: _Problems) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            problems.add(("seeds",), f"a seed count must be at least 1, got {value}")
            return []
        return list(range(value))
    if not isinstance(value, list) or not value:
        problems.add(("seeds",), f"expected a list of integer seeds or a count, got {value!r}")
        return []
    seeds = []
    for index, seed in enumerate(value):
        if isinstance(seed, bool) or not isinstance(seed, int):
            problems.add(("seeds", index), f"expected an integer, got {seed!r}")
        elif seed in seeds:
            problems.add(("seeds", index), f"seed {seed} is listed twice")
        else:
            seeds.append(seed)
    return seeds


def _parse_cluster(value: Any, problems: _Problems) -> ClusterSpec:
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
            if isinstance(item, bool) or not isinstance(item, int) or item < least:
                problems.add(path, f"expected an integer >= {least}, got {item!r}")
            else:
                values[key] = item
        elif key == "memory":
            if not _is_size(item):
                problems.add(path, f"expected a size such as 16GB, got {item!r}")
            else:
                values[key] = str(item)
        elif key == "walltime":
            if not isinstance(item, str) or not _WALLTIME.match(item):
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
    return ClusterSpec(**values)


def _is_size(value: Any) -> bool:
    from dask.utils import parse_bytes

    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    try:
        return parse_bytes(value) > 0
    except ValueError:
        return False


# ------------------------------------------------------------------------------ the tasks
@dataclasses.dataclass(frozen=True)
class SweepTask:
    """One training run: what :func:`run_task` passes to :func:`avda.train.loop.train`."""

    name: str  # run folder relative to the sweep's out: [cache/]label/setting/seedN
    run: Path
    cache: Path
    cache_name: str
    head: str
    method: str
    setting: str
    source: tuple[str, ...]
    target: tuple[str, ...]
    seed: int
    overrides: dict[str, Any]
    device: str | None = None
    torch_threads: int = 0  # 0: leave torch's default


@dataclasses.dataclass
class TaskOutcome:
    """What became of a task: ``complete``, ``skipped`` (complete before) or ``failed``."""

    name: str
    status: str
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    resumed_from_epoch: int = 0
    worker: str = ""


def plan(spec: SweepSpec, out: str | Path) -> list[SweepTask]:
    """Every (cache, head, setting, seed) as a task, in a stable order."""
    out = Path(out)
    tasks = []
    several = len(spec.caches) > 1
    for cache_name, cache in spec.caches.items():
        for head in spec.heads:
            method = f"{head.label} ({cache_name})" if several else head.label
            for setting in spec.settings:
                for seed in spec.seeds:
                    name = f"{head.label}/{setting.name}/seed{seed}"
                    name = f"{cache_name}/{name}" if several else name
                    tasks.append(
                        SweepTask(
                            name=name,
                            run=out / name,
                            cache=cache,
                            cache_name=cache_name,
                            head=head.name,
                            method=method,
                            setting=setting.name,
                            source=setting.source_domains,
                            target=setting.target_domains,
                            seed=seed,
                            overrides=dict(head.overrides),
                            device=None if spec.device == "auto" else spec.device,
                        )
                    )
    return tasks


def _checkpoint_epoch(run: Path) -> int:
    path = run / runs.CHECKPOINT
    if not path.exists():
        return 0
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False).get("epoch", 0))


def _worker_device(device: str | None) -> tuple[str | None, str]:
    """The device for this worker (GPU ``i mod count`` on multi-GPU hosts) and the worker name."""
    try:
        from distributed import get_worker

        worker_name = str(get_worker().name)
    except ValueError:  # not inside a Dask worker (a serial run)
        worker_name = ""
    import torch

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r}, but worker {worker_name or 'here'} has no CUDA device; "
            "set device: auto (or cpu) in the sweep spec, or run the workers on GPU machines"
        )
    wants_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if wants_cuda and torch.cuda.device_count() > 1:
        digits = re.findall(r"\d+", worker_name)
        index = int(digits[-1]) if digits else 0
        return f"cuda:{index % torch.cuda.device_count()}", worker_name
    return device, worker_name


def run_task(task: SweepTask) -> TaskOutcome:
    """Train one run on a worker. AvdaErrors fail the run; anything else raises (Dask retries)."""
    from avda.train.loop import train

    began = time.perf_counter()
    if task.torch_threads > 0:
        import torch

        torch.set_num_threads(task.torch_threads)
    resumed_from = _checkpoint_epoch(task.run)
    worker = ""
    try:
        device, worker = _worker_device(task.device)
        if resumed_from:
            log.info("%s: resuming from epoch %d on worker %s", task.name, resumed_from, worker)
        result = train(
            cache=task.cache,
            head=task.head,
            source=list(task.source),
            target=list(task.target),
            out=task.run,
            seed=task.seed,
            overrides=task.overrides,
            device=device,
            progress=False,
        )
    except AvdaError as error:  # retrying cannot fix a bad config, missing data or divergence
        return TaskOutcome(
            task.name,
            "failed",
            error=f"{type(error).__name__}: {error}",
            seconds=time.perf_counter() - began,
            resumed_from_epoch=resumed_from,
            worker=worker,
        )
    return TaskOutcome(
        task.name,
        "skipped" if result.skipped else "complete",
        metrics=dict(result.metrics),
        seconds=time.perf_counter() - began,
        resumed_from_epoch=resumed_from,
        worker=worker,
    )


def _finished_mismatch(task: SweepTask) -> str:
    """Why a complete run directory does not hold this task's run ("" when it does)."""
    from avda.train import heads as heads_lib

    config = runs.read_config(task.run)
    wanted = heads_lib.config_class(task.head).from_dict(task.overrides).to_dict()
    checks = {
        "head": (config.get("head"), task.head),
        "head config": (config.get("head_config"), wanted),
        "source": (config.get("source"), list(task.source)),
        "target": (config.get("target"), list(task.target)),
        "seed": (config.get("seed"), task.seed),
        "cache": (config.get("cache"), str(Path(task.cache).resolve())),
    }
    differ = [name for name, (have, want) in checks.items() if have != want]
    if not differ:
        return ""
    return (
        f"RunError: {task.run} holds a finished run with another {', '.join(differ)}; "
        "give the head another label or remove that folder"
    )


# ------------------------------------------------------------------------------ the summary
@dataclasses.dataclass
class SweepSummary:
    out: Path
    tasks: list[SweepTask]
    outcomes: dict[str, TaskOutcome]
    seconds: float = 0.0

    def _with(self, status: str) -> list[TaskOutcome]:
        return [o for o in self.outcomes.values() if o.status == status]

    @property
    def completed(self) -> list[TaskOutcome]:
        return self._with("complete")

    @property
    def skipped(self) -> list[TaskOutcome]:
        return self._with("skipped")

    @property
    def failed(self) -> list[TaskOutcome]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def run_dirs(self) -> list[Path]:
        """Run directories that are complete now (trained here or before)."""
        return [t.run for t in self.tasks if self.outcomes[t.name].status != "failed"]

    def text(self) -> str:
        lines = [
            f"{len(self.tasks)} runs in {self.out}: {len(self.completed)} trained, "
            f"{len(self.skipped)} already complete, {len(self.failed)} failed "
            f"({self.seconds:.1f} s)"
        ]
        resumed = [o for o in self.outcomes.values() if o.resumed_from_epoch]
        for outcome in resumed:
            lines.append(f"  resumed {outcome.name} from epoch {outcome.resumed_from_epoch}")
        for outcome in self.failed:
            lines.append(f"  FAILED {outcome.name}: {outcome.error}")
        if self.failed:
            lines.append(f"failed runs are listed in {self.out / FAILURES}")
        return "\n".join(lines)


def _write_index(out: Path, spec: SweepSpec, tasks: list[SweepTask], outcomes: dict) -> None:
    """``OUT/sweep.json``: each run's method label, setting, seed and status (for tables)."""
    entries = []
    for task in tasks:
        outcome = outcomes.get(task.name)
        entries.append(
            {
                "run": task.name,
                "method": task.method,
                "head": task.head,
                "cache": task.cache_name,
                "setting": task.setting,
                "seed": task.seed,
                "status": outcome.status if outcome else "pending",
                "error": outcome.error if outcome else "",
            }
        )
    index = {"spec": spec.source, "runs": entries}
    runs.atomic_write_text(out / INDEX, json.dumps(index, indent=2) + "\n")


def _write_failures(out: Path, tasks: list[SweepTask], outcomes: dict) -> None:
    path = out / FAILURES
    failed = [(t, outcomes[t.name]) for t in tasks if outcomes[t.name].status == "failed"]
    if not failed:
        path.unlink(missing_ok=True)
        return
    frame = pd.DataFrame(
        [
            {
                "run": str(t.run),
                "method": t.method,
                "setting": t.setting,
                "seed": t.seed,
                "error": o.error,
            }
            for t, o in failed
        ]
    )
    frame.to_csv(path, index=False)


# ------------------------------------------------------------------------------ clusters
def available_cores() -> int:
    """Cores this process may use (its CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_workers(spec: ClusterSpec) -> int:
    """Local worker processes: the spec's ``workers``, else one per GPU, else one per core."""
    if spec.workers:
        return spec.workers
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return available_cores()


def make_jobqueue_cluster(spec: ClusterSpec, kind: str | None = None):
    """A dask-jobqueue ``SLURMCluster`` or ``PBSCluster`` with the spec's resources (not scaled).

    Each worker process runs one training run at a time (worker resource ``train=1``).
    """
    kind = kind or spec.kind
    missing = [key for key in ("cores", "memory") if getattr(spec, key) is None]
    if missing:
        raise ConfigError(
            f"cluster kind {kind} needs cluster.{' and cluster.'.join(missing)} in the sweep spec "
            "(cores and memory per job, e.g. cores: 8, memory: 32GB)"
        )
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(
            f"--cluster {kind} needs dask-jobqueue: pip install dask-jobqueue"
        ) from None
    options: dict[str, Any] = {
        "cores": spec.cores,
        "memory": spec.memory,
        "processes": spec.processes,
        "walltime": spec.walltime,
        "queue": spec.queue,
        "account": spec.account,
        "interface": spec.interface,
        "local_directory": spec.local_directory,
        "log_directory": spec.log_directory,
        "job_script_prologue": list(spec.job_script_prologue),
        "worker_extra_args": ["--resources", "train=1"],
        "job_name": "avda-sweep",
    }
    directives = list(spec.job_extra_directives)
    if kind == "slurm":
        if spec.gpus:
            directives.append(f"--gres=gpu:{spec.gpus}")
        cluster_class = dask_jobqueue.SLURMCluster
    elif kind == "pbs":
        memory = spec.memory.replace(" ", "")
        resource = f"select=1:ncpus={spec.cores}:mem={memory}"
        options["resource_spec"] = resource + (f":ngpus={spec.gpus}" if spec.gpus else "")
        cluster_class = dask_jobqueue.PBSCluster
    else:
        raise ConfigError(f"cluster kind must be slurm or pbs here, got {kind!r}")
    options["job_extra_directives"] = directives
    options = {k: v for k, v in options.items() if v is not None}
    return cluster_class(**options)


@contextlib.contextmanager
def connect(
    spec: SweepSpec, *, scheduler: str | None = None, cluster: str | None = None
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A Dask client and the submit options for this spec; closes what it started."""
    from distributed import Client, LocalCluster

    kind = _cluster_kind(spec, scheduler, cluster)
    if scheduler is not None:
        client = Client(scheduler, timeout="30s")
        try:
            yield client, {"torch_threads": scheduler_torch_threads(client), "resources": None}
        finally:
            client.close()
        return
    if kind == "local":
        workers = local_workers(spec.cluster)
        cores = available_cores()
        local = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=spec.cluster.memory or "auto",
            dashboard_address=":0",
            local_directory=spec.cluster.local_directory,
        )
        options = {"torch_threads": max(1, cores // workers), "resources": None}
    else:
        local = make_jobqueue_cluster(spec.cluster, kind)
        local.scale(jobs=spec.cluster.workers or 1)
        cores_per_worker = max(1, (spec.cluster.cores or 1) // spec.cluster.processes)
        options = {"torch_threads": cores_per_worker, "resources": {"train": 1}}
    try:
        client = Client(local)
        try:
            yield client, options
        finally:
            client.close()
    finally:
        local.close()


def _cluster_kind(spec: SweepSpec, scheduler: str | None, cluster: str | None) -> str:
    if scheduler is not None and cluster is not None:
        raise ConfigError("give either --scheduler ADDRESS or --cluster KIND, not both")
    kind = cluster or spec.cluster.kind
    if kind not in CLUSTER_KINDS:
        raise ConfigError(f"--cluster must be one of {', '.join(CLUSTER_KINDS)}, got {kind!r}")
    return kind


def scheduler_torch_threads(client: Any) -> int:
    """PyTorch threads per run on an existing cluster: per host, its cores divided by the Dask
    threads of all workers on it (each thread runs one run); the smallest over hosts, at least 1.
    0 (leave PyTorch's default) when no worker is connected yet."""
    workers = client.scheduler_info().get("workers", {})
    if not workers:
        return 0
    cores = client.run(available_cores)
    threads: dict[str, int] = {}
    host_cores: dict[str, int] = {}
    for address, worker in workers.items():
        host = worker.get("host", address)
        threads[host] = threads.get(host, 0) + int(worker.get("nthreads", 1))
        host_cores[host] = int(cores.get(address, 1))
    return min(max(1, host_cores[host] // threads[host]) for host in threads)


def dashboard_link(client: Any) -> str:
    """The scheduler's dashboard address, or "" when it serves none (no bokeh installed)."""
    try:
        services = client.scheduler_info().get("services", {})
    except (OSError, TimeoutError):
        return ""
    return client.dashboard_link if "dashboard" in services else ""


# ------------------------------------------------------------------------------ the sweep
def run_sweep(
    spec: SweepSpec | str | Path,
    *,
    out: str | Path | None = None,
    scheduler: str | None = None,
    cluster: str | None = None,
    progress: bool = True,
) -> SweepSummary:
    """Run every task of ``spec`` that is not complete yet; the summary lists what failed."""
    from distributed import as_completed
    from tqdm import tqdm

    began = time.perf_counter()
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    _cluster_kind(spec, scheduler, cluster)  # usage errors before any work
    out_dir = Path(out) if out is not None else spec.out
    if out_dir is None:
        raise ConfigError(f"{spec.source}: no output folder; give --out DIR or out: in the spec")
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = plan(spec, out_dir)
    outcomes: dict[str, TaskOutcome] = {}
    pending = []
    for task in tasks:
        if runs.is_complete(task.run):
            mismatch = _finished_mismatch(task)
            outcomes[task.name] = TaskOutcome(
                task.name, "failed" if mismatch else "skipped", error=mismatch
            )
        else:
            pending.append(task)
    log.info(
        "sweep %s: %d runs, %d already complete, %d to train",
        spec.source,
        len(tasks),
        len(tasks) - len(pending),
        len(pending),
    )
    _write_index(out_dir, spec, tasks, outcomes)
    if pending:
        with connect(spec, scheduler=scheduler, cluster=cluster) as (client, options):
            link = dashboard_link(client)
            if link:
                log.info("Dask dashboard: %s", link)
            futures = {}
            for task in pending:
                task = dataclasses.replace(task, torch_threads=options["torch_threads"])
                future = client.submit(
                    run_task,
                    task,
                    key=f"avda-train-{task.name}",
                    retries=spec.retries,
                    pure=False,
                    resources=options["resources"],
                )
                futures[future] = task
            bar = tqdm(total=len(futures), desc="sweep", unit="run", disable=not progress)
            try:
                for future in as_completed(futures):
                    task = futures[future]
                    outcome = _outcome(future, task)
                    outcomes[task.name] = outcome
                    if outcome.status == "failed":
                        log.warning("%s failed: %s", task.name, outcome.error)
                    bar.update(1)
                    bar.set_postfix(failed=sum(o.status == "failed" for o in outcomes.values()))
            finally:
                bar.close()
                for future in futures:
                    future.release()
    _write_index(out_dir, spec, tasks, outcomes)
    _write_failures(out_dir, tasks, outcomes)
    summary = SweepSummary(out_dir, tasks, outcomes, time.perf_counter() - began)
    log.info("%s", summary.text().splitlines()[0])
    return summary


def _outcome(future: Any, task: SweepTask) -> TaskOutcome:
    if future.status == "finished":
        return future.result()
    error = future.exception()
    return TaskOutcome(task.name, "failed", error=f"{type(error).__name__}: {error}")


def run_serial(spec: SweepSpec, *, out: str | Path, progress: bool = False) -> SweepSummary:
    """The same tasks one after another in this process (no Dask): the benchmark's baseline."""
    began = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = plan(spec, out)
    outcomes = {}
    for task in tasks:
        outcome = run_task(task)
        outcomes[task.name] = outcome
        if progress:
            log.info("%s: %s (%.1f s)", task.name, outcome.status, outcome.seconds)
    _write_index(out, spec, tasks, outcomes)
    _write_failures(out, tasks, outcomes)
    return SweepSummary(out, tasks, outcomes, time.perf_counter() - began)
