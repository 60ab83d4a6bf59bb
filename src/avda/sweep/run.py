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
data; a full disk, a read-only file system, permission denied) fail the run at once; the other
runs go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from avda import dask_support, runs
from avda._io import DISK_FULL, NOT_WRITABLE, atomic_write_text, os_error_line, quiet_logs
from avda.cache.lock import sweep_lock
from avda.dask_support import (
    CONNECT_SECONDS,
    available_cores,
    collect_warnings,
    quiet_dask_logs,
    quiet_lost_scheduler_logs,
    quiet_worker_logs,
    refuse_unguarded_main,
    threads_per_worker,
    workers_ignore_interrupt,
)
from avda.dask_support import connect as connect_scheduler
from avda.devices import gpu_count
from avda.errors import AvdaError, ConfigError
from avda.paths import RUNS_OUTPUT, check_output_folder
from avda.sweep.spec import (
    CLUSTER_KINDS,
    DEFAULT_WORKER_TIMEOUT,
    ClusterSpec,
    HeadSpec,
    SweepSpec,
    cluster_problems,
    load_spec,
    parse_spec,
    pbs_memory,
    pbs_walltime,
    spec_words,
)
from avda.wording import VERBOSE, keyword_errors, keywords, spoken

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.5
"""How often a sweep waiting for its runs checks that its cluster still has a worker."""
CLOSE_SECONDS = 60
"""Longest wait for a cluster to close its workers (cancel its jobs), lost ones included."""
INDEX = "sweep.json"
FAILURES = "sweep-failures.csv"
WARNINGS = "sweep-warnings.log"


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
    protocol: str | None = None  # head is then the protocol's method name
    busy_wait: float = 0.0  # longest wait for a run folder another process trains (0: default)


BUSY_WAIT_SECONDS = 6 * 3600.0
"""Longest wait of a task for its run folder while another process trains it (a worker the
sweep lost that still runs), when the spec gives no ``cluster.walltime`` (then: the walltime
and 10 minutes, as a lost job cannot run longer)."""
BUSY_POLL_SECONDS = 2.0


def busy_wait_seconds(spec: SweepSpec) -> float:
    """A task's longest wait for a busy run folder under ``spec`` (see BUSY_WAIT_SECONDS)."""
    if not spec.cluster.walltime:
        return BUSY_WAIT_SECONDS
    try:
        hours, minutes, seconds = (int(p) for p in pbs_walltime(spec.cluster.walltime).split(":"))
    except (ValueError, TypeError):
        return BUSY_WAIT_SECONDS
    return hours * 3600.0 + minutes * 60.0 + seconds + 600.0


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
    warnings: list[str] = dataclasses.field(default_factory=list)  # avda's, on a Dask worker

    def __post_init__(self) -> None:  # every failure record of a sweep in its spec's words
        self.error = spec_words(self.error)


def plan(spec: SweepSpec, out: str | Path) -> list[SweepTask]:
    """Every (cache, head, setting, seed) as a task, in a stable order. Paths are absolute:
    a worker of another cluster runs in its own directory."""
    out = Path(out).absolute()
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
                            cache=Path(cache).absolute(),
                            cache_name=cache_name,
                            head=head.name,
                            method=method,
                            setting=setting.name,
                            source=setting.source_domains,
                            target=setting.target_domains,
                            seed=seed,
                            overrides=dict(head.overrides),
                            device=None if spec.device == "auto" else spec.device,
                            protocol=spec.protocol,
                        )
                    )
    return tasks


def _checkpoint_epoch(run: Path) -> int:
    path = run / runs.CHECKPOINT
    if not path.exists():
        return 0

    return int(runs.load_checkpoint(path).get("epoch", 0))


def _worker_device(device: str | None) -> tuple[str | None, str]:
    """The device for this worker (GPU ``i mod count`` on multi-GPU hosts) and the worker name."""
    worker_name = dask_support.worker_name()  # "" in a serial run
    import torch

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r}, but worker {worker_name or 'here'} has no CUDA device; "
            "set device: auto (or cpu) in the sweep spec, or run the workers on GPU machines"
        )
    return dask_support.worker_device(device, worker_name), worker_name


def run_task(task: SweepTask) -> TaskOutcome:
    """Train one run on a worker. AvdaErrors, a full disk and a folder it may not write
    (read-only, permission denied) fail the run; anything else raises (Dask retries)."""
    with collect_warnings() as warnings, spoken(spec_words):  # its warnings in the spec's words
        outcome = _run_task(task)
    outcome.warnings = list(warnings)
    return outcome


def _last_epoch(run: Path) -> int:
    """The last epoch in the run's metrics.jsonl (0 for none, or an unreadable file)."""
    try:
        return max((int(r.get("epoch", 0)) for r in runs.read_metrics(run)), default=0)
    except (AvdaError, OSError, ValueError):
        return 0


def _wait_for_run_folder(task: SweepTask, deadline: float, said: list[str]) -> None:
    """Wait a moment (``BUSY_POLL_SECONDS``, at most until ``deadline``) for the run folder
    another process holds, logging each new holder once (``said``).

    The holder is most likely a worker the sweep lost (cut off from the scheduler, its job
    still running) that trains this very run: it finishes it or ends (its lock goes with it),
    and the run is then skipped as complete or resumed, instead of failing as busy. Only a
    lock the kernel holds (``train`` refused with RunBusyError) is waited for: on a file system
    without locks the record a killed holder left behind would look held."""
    from avda.cache.lock import training_holder

    holder = training_holder(task.run)
    if holder is None:  # let go meanwhile: try again at once
        return
    if holder not in said:
        said.append(holder)
        log.warning(
            "%s: its run folder is being trained by %s (a worker the sweep lost, still "
            "running?): waiting for it to finish or end (at most %g s)",
            *(task.name, holder, max(0.0, deadline - time.monotonic())),
        )
    time.sleep(min(BUSY_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def _run_task(task: SweepTask) -> TaskOutcome:
    from avda.cache.lock import RunBusyError
    from avda.train.loop import train

    began = time.perf_counter()
    if task.torch_threads > 0:
        import torch

        torch.set_num_threads(task.torch_threads)
    waited = task.busy_wait or BUSY_WAIT_SECONDS
    deadline = time.monotonic() + waited
    holders: list[str] = []
    worker = ""
    while True:
        resumed_from = _checkpoint_epoch(task.run)
        logged = _last_epoch(task.run)  # metrics are written every epoch, checkpoints less often
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
                protocol=task.protocol,
            )
        except RunBusyError as error:  # another process trains it (see _wait_for_run_folder)
            if time.monotonic() < deadline:
                _wait_for_run_folder(task, deadline, holders)
                continue
            return TaskOutcome(
                task.name,
                "failed",
                error=f"{type(error).__name__}: waited {waited:g} s for it: {error}",
                seconds=time.perf_counter() - began,
                worker=worker,
            )
        except (AvdaError, OSError) as error:
            # retrying cannot fix a bad config, missing data, divergence, a full disk or a
            # folder it may not write (read-only, permission denied)
            if isinstance(error, OSError) and error.errno not in DISK_FULL | NOT_WRITABLE:
                raise
            # Resumed only if it trained on (a refused resume trained nothing: its epochs stand).
            trained_on = resumed_from and _last_epoch(task.run) > logged
            return TaskOutcome(
                task.name,
                "failed",
                error=os_error_line(error, str(task.run))
                if isinstance(error, OSError)
                else f"{type(error).__name__}: {error}",
                seconds=time.perf_counter() - began,
                resumed_from_epoch=resumed_from if trained_on else 0,
                worker=worker,
            )
        break
    if holders:
        log.info(
            "%s: its run folder is free again: %s",
            task.name,
            "skipped as complete" if result.skipped else "trained",
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
    """Why a complete run directory does not hold this task's run ("" when it does): the
    configuration ``avda train`` would record for the task (its head config for this data
    size, its tasks and class counts) against the run's, and the cache it trained on."""
    from avda.cache import open_cache
    from avda.train import setup as setup_lib
    from avda.train.loop import (
        check_same_cache,
        config_difference,
        recorded_config,
        resolved_config,
    )

    try:
        with quiet_logs():  # its warnings were reported when it trained
            setup = setup_lib.plan(
                cache=task.cache,
                head=task.head,
                source=task.source,
                target=task.target,
                overrides=task.overrides,
                device="cpu",
                protocol=task.protocol,
            )
            wanted = resolved_config(
                setup, task.cache, task.source, task.target, task.seed, task.protocol, task.head
            )
            check_same_cache(task.run, open_cache(task.cache))  # a rebuilt cache at that path
    except AvdaError as error:
        return f"{type(error).__name__}: {error}"
    config = recorded_config(task.run)
    differ = {
        key.replace("_", " "): None
        for key in dict.fromkeys([*config, *wanted])
        if key != "avda_version" and config.get(key) != wanted.get(key)
    }
    if not differ:
        return ""
    fields = config_difference(
        {k: v for k, v in config.items() if k != "avda_version"},
        {k: v for k, v in wanted.items() if k != "avda_version"},
    )
    return (
        f"RunError: {task.run} holds a finished run with another {', '.join(differ)} "
        f"({fields}); give the head another label or remove that folder"
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

    def __repr__(self) -> str:  # the dataclass's listed every task and outcome in full
        return f"SweepSummary({self.text().splitlines()[0]})"

    def text(self) -> str:
        resumed = [o for o in self.outcomes.values() if o.resumed_from_epoch]
        carried_on = sum(1 for o in self.completed if o.resumed_from_epoch)
        of_them = f" ({carried_on} of them resumed)" if carried_on else ""
        lines = [
            f"{len(self.tasks)} runs in {self.out}: {len(self.completed)} trained{of_them}, "
            f"{len(self.skipped)} already complete, {len(self.failed)} failed "
            f"({self.seconds:.1f} s)"
        ]
        for outcome in resumed:
            lines.append(f"  resumed {outcome.name} from epoch {outcome.resumed_from_epoch}")
        for outcome in self.failed:
            lines.append(f"  FAILED {outcome.name}: {outcome.error}")
        if self.failed:
            lines.append(f"failed runs are listed in {self.out / FAILURES}")
        return "\n".join(lines)


def _write_index(out: Path, spec: SweepSpec, tasks: list[SweepTask], outcomes: dict) -> None:
    """``OUT/sweep.json``: each run's method label, setting, seed and status (for tables).

    Runs an earlier spec swept into the same ``out`` keep their entries (first, in their order)
    while their folders hold a run: ``avda evaluate OUT`` lists the runs of the index, and a
    second spec (another head) must not hide the first one's finished runs."""
    earlier, published = _earlier_entries(out, {task.name for task in tasks})
    entries = [entry for entry in earlier if (out / entry["run"] / runs.CONFIG).exists()]
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
    index: dict[str, Any] = {"spec": spec.source, "protocol": spec.protocol, "runs": entries}
    if spec.published or published:
        index["published"] = spec.published or published
    atomic_write_text(out / INDEX, json.dumps(index, indent=2) + "\n")


def _earlier_entries(out: Path, names: set[str]) -> tuple[list[dict[str, Any]], Any]:
    """The entries of ``out``'s index that are not runs of this spec, and its published rows
    (an index that cannot be read is replaced, with a warning)."""
    index = out / INDEX
    if not index.exists():
        return [], None
    try:
        found = json.loads(index.read_text())
        entries = [e for e in found.get("runs", []) if str(e["run"]) not in names]
        return entries, found.get("published")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        log.warning("%s is not a readable sweep index: written anew for this spec's runs", index)
        return [], None


def task_problems(spec: SweepSpec) -> tuple[list[str], dict[Path, int]]:
    """What ``avda sweep --check`` finds wrong with the runs themselves: each (cache, head,
    setting) is set up as ``avda train`` would (the cache's domains, modalities and sizes, the
    head built on two segments' features), so that a head that cannot train on a cache (a
    two-modality head on an RGB-only cache) is found before a cluster starts. Returns the
    problems (``label/setting: error``) and each cache not there yet with its number of runs
    (not checked)."""
    from avda.train import setup as setup_lib

    problems, unchecked, seen = [], {}, set()
    for task in plan(spec, spec.out or "."):
        if not task.cache.exists():
            unchecked[task.cache] = unchecked.get(task.cache, 0) + 1
            continue
        key = (task.cache, task.method, task.setting)
        if key in seen:  # the seeds of one run set up alike
            continue
        seen.add(key)
        try:
            with quiet_logs():
                setup = setup_lib.plan(
                    cache=task.cache, head=task.head, source=task.source, target=task.target,
                    overrides=task.overrides, device="cpu", protocol=task.protocol,
                )  # fmt: skip
                setup.check_head()
        except AvdaError as error:
            problems.append(f"{task.name.rsplit('/seed', 1)[0]}: {spec_words(str(error))}")
        except (ValueError, TypeError, RuntimeError) as error:  # a head's own refusal
            why = spec_words(f"{type(error).__name__}: {error}")
            problems.append(f"{task.name.rsplit('/seed', 1)[0]}: {why}")
    return problems, unchecked


def _arrow(setting: Any) -> str:
    """``D1,D2->D3``: a setting as a spec writes it (its folder name is ``D1,D2-D3``)."""
    return f"{','.join(setting.source_domains)}->{','.join(setting.target_domains)}"


def describe_spec(spec: SweepSpec) -> str:
    """What ``avda sweep --check`` prints: the spec's runs, protocol and published rows."""
    lines = [
        f"{spec.source}: valid; {len(spec.caches)} cache(s) x {len(spec.heads)} head(s) x "
        f"{len(spec.settings)} setting(s) x {len(spec.seeds)} seed(s) = "
        f"{len(spec.caches) * len(spec.heads) * len(spec.settings) * len(spec.seeds)} runs",
        f"  protocol: {spec.protocol or 'none (each head at its defaults)'}",
        f"  heads: {', '.join(h.label for h in spec.heads)}",
        f"  settings: {', '.join(_arrow(s) for s in spec.settings)}",
    ]
    if spec.published:
        measured = spec.published.get("set")
        lines.append(
            f"  published: {len(spec.published['rows'])} row(s) from {spec.published['source']}"
            + (f" (measured on {measured})" if measured else "")
        )
    return "\n".join(lines)


def _write_failures(out: Path, tasks: list[SweepTask], outcomes: dict) -> None:
    """``OUT/sweep-failures.csv``: this spec's failed runs, after those of an earlier spec
    swept into ``out`` (``sweep.json`` keeps their entries, which name this file)."""
    path = out / FAILURES
    failed = [(t, outcomes[t.name]) for t in tasks if outcomes[t.name].status == "failed"]
    ours = {str(t.run) for t in tasks}
    earlier = []
    if path.exists():
        try:
            found = pd.read_csv(path, dtype=str, keep_default_na=False)
            earlier = [r for r in found.to_dict("records") if str(r.get("run")) not in ours]
        except (OSError, ValueError, pd.errors.ParserError):
            log.warning("%s cannot be read: written anew for this spec's runs", path)
    rows = earlier + [
        {"run": str(t.run), "method": t.method, "setting": t.setting, "seed": t.seed,
         "error": o.error}
        for t, o in failed
    ]  # fmt: skip
    if not rows:
        path.unlink(missing_ok=True)
        return
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))


# ------------------------------------------------------------------------------ clusters
def local_workers(spec: ClusterSpec) -> int:
    """Local worker processes: the spec's ``workers``, else one per GPU, else one per core."""
    if spec.workers:
        return spec.workers
    return gpu_count() or available_cores()


def cluster_size(spec: ClusterSpec, kind: str, runs: int | None = None) -> int:
    """The local worker processes (:func:`local_workers`) or SLURM/PBS jobs (``workers``,
    default 1) a sweep starts: no more than its ``runs`` need (jobs of ``processes`` workers
    each), so that none idles holding cores, GPUs or a job's hours."""
    size = local_workers(spec) if kind == "local" else spec.workers or 1
    if runs is not None:
        size = min(size, max(1, -(-runs // (1 if kind == "local" else spec.processes))))
    return size


def make_jobqueue_cluster(spec: ClusterSpec, kind: str | None = None):
    """A dask-jobqueue ``SLURMCluster`` or ``PBSCluster`` with the spec's resources (not scaled).

    Each worker process runs one training run at a time (worker resource ``train=1``).
    """
    kind = kind or spec.kind
    for key, message in cluster_problems(spec, kind):
        raise ConfigError(f"cluster.{key}: {message} in the sweep spec")
    dask_jobqueue = import_jobqueue(kind)
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
        memory = pbs_memory(spec.memory)
        options["memory"] = memory  # dask-jobqueue's own parser reads PBS's units
        if spec.walltime is not None:
            options["walltime"] = pbs_walltime(spec.walltime)
        resource = f"select=1:ncpus={spec.cores}:mem={memory}"
        options["resource_spec"] = resource + (f":ngpus={spec.gpus}" if spec.gpus else "")
        cluster_class = dask_jobqueue.PBSCluster
    else:
        raise ConfigError(f"cluster kind must be slurm or pbs here, got {kind!r}")
    options["job_extra_directives"] = directives
    options = {k: v for k, v in options.items() if v is not None}
    with warnings.catch_warnings():
        # its scheduler's dashboard on a busy 8787 (another user's Dask on a login node) takes
        # another port, and Distributed said so as 'Perhaps you already have a cluster
        # running?' above the sweep's lines; the sweep logs the dashboard's address
        warnings.filterwarnings("ignore", "Port .* is already in use", UserWarning)
        return cluster_class(**options)


def check_cluster(
    spec: SweepSpec,
    cluster: str | None = None,
    *,
    queue_timeout: float | None = None,
    scheduler: str | None = None,
) -> None:
    """Refuse, in one line naming the spec, a cluster ``--cluster KIND`` (default the spec's
    kind) cannot start with the spec's resources (before anything is written), ``--cluster``
    with ``--scheduler``, and a ``--queue-timeout`` (``queue_timeout``), or a local spec's
    ``cluster.queue_timeout``, where no queue is watched (:func:`_unwatched_queue`)."""
    kind = _cluster_kind(spec, scheduler, cluster)
    check_queue_timeout(queue_timeout, kind, scheduler)
    unwatched = _unwatched_queue(kind, scheduler)
    if spec.cluster.kind == "local" and unwatched and spec.cluster.queue_timeout is not None:
        # a spec of another kind run with --cluster local or --scheduler leaves it unused, as
        # its walltime; a local spec's may be meant for --cluster slurm (--cluster wins):
        # refused where it bounds nothing
        where, fix = unwatched
        raise ConfigError(
            f"{spec.source}: cluster.queue_timeout: bounds the wait for SLURM/PBS jobs pending "
            f"in their queue; this sweep runs on {where}, so it would bound nothing: remove "
            f"it, or {fix}"
        )
    if scheduler is not None:
        return  # its workers run with their own resources, not the spec's
    for key, message in cluster_problems(spec.cluster, kind):
        raise ConfigError(f"{spec.source}: cluster.{key}: {message}")


def _unwatched_queue(kind: str, scheduler: str | None) -> tuple[str, str] | None:
    """Where a sweep watches no SLURM/PBS queue, and how to run it where one is (None: it
    watches one): a local cluster, or a running scheduler (``--scheduler``, which
    ``--cluster`` cannot go with)."""
    if scheduler is not None:
        return (
            f"--scheduler {scheduler}, whose workers avda does not submit",
            "run with --cluster slurm or pbs instead of --scheduler",
        )
    if kind == "local":
        return "a local cluster, which has no queue", "run with --cluster slurm or pbs"
    return None


def check_queue_timeout(
    queue_timeout: float | None, kind: str, scheduler: str | None = None
) -> None:
    """Refuse ``--queue-timeout`` where no SLURM/PBS queue is watched
    (:func:`_unwatched_queue`)."""
    unwatched = _unwatched_queue(kind, scheduler)
    if queue_timeout is None or unwatched is None:
        return
    where, fix = unwatched
    raise ConfigError(
        "--queue-timeout bounds the wait for SLURM/PBS jobs pending in their queue; this sweep "
        f"runs on {where}: leave --queue-timeout out, or {fix}"
    )


def import_jobqueue(kind: str) -> Any:
    """``dask_jobqueue``, imported without the SIGINT handler it installs on import
    (``sys.exit()``: Ctrl-C would end the sweep with exit 1 and no word, not avda's
    ``interrupted`` line and exit 130)."""
    import signal
    import threading

    from avda.optional import require

    previous = signal.getsignal(signal.SIGINT)
    try:
        return require(
            "dask_jobqueue", package="dask-jobqueue", extra="hpc", feature=f"--cluster {kind}"
        )
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)


SUBMIT_COMMANDS = {"slurm": "sbatch", "pbs": "qsub"}
QUEUE_COMMANDS = {"slurm": "squeue -u $USER", "pbs": "qstat -u $USER"}


def check_submit_command(kind: str) -> None:
    """Refuse a SLURM / PBS cluster where dask-jobqueue is not installed or its submit command
    (sbatch / qsub) is not on PATH (the package first: it can be installed anywhere)."""
    import_jobqueue(kind)
    command = SUBMIT_COMMANDS[kind]
    if shutil.which(command) is None:
        raise ConfigError(
            f"--cluster {kind} submits its workers with `{command}`, which is not on PATH here: "
            f"run avda sweep on a {kind.upper()} login node, or use --cluster local or "
            "--scheduler tcp://HOST:8786"
        )


def start_jobs(
    cluster: Any, jobs: int, kind: str, spec_name: str = "SPEC", used: frozenset = frozenset()
) -> None:
    """Submit worker jobs up to ``jobs`` now (new ones named outside ``used``), so that a
    failing submit command raises here.

    (``cluster.scale`` submits them in the background, where a failure is only logged and the
    sweep would wait forever.)
    """
    before = set(cluster.worker_spec)  # jobs submitted before (waiting in the queue): kept
    try:
        _grow(cluster, jobs, used)
    except Exception as exc:  # the submit command failed or printed no job id
        from distributed.core import Status

        for name in set(cluster.worker_spec) - before:  # not submitted: nothing to cancel
            cluster.worker_spec.pop(name, None)
            cluster.workers.pop(name, None)
        for job in getattr(cluster, "_created", ()):  # else closing the cluster fails, and
            if job.status == Status.created:  # retries for 10 s at exit
                job.status = Status.failed
        text = str(exc).strip()
        lines = text.splitlines()
        first = lines[0].rstrip(".") if text else type(exc).__name__
        # dask-jobqueue's text holds the command's stderr below a "stderr:" line: the reason
        marks = [i for i, line in enumerate(lines) if line.strip().lower() == "stderr:"]
        said = " ".join(line.strip() for line in lines[marks[-1] + 1 :]) if marks else ""
        output = [i for i, line in enumerate(lines) if line.strip().endswith("output is:")]
        if output and not said.strip():  # no job id in what it printed: show what it printed
            said = " ".join(line.strip() for line in lines[output[-1] + 1 :]) or "nothing"
            said = f"it printed: {said}"
        if said.strip():
            first = f"{first} ({said[:300]})"
        raise AvdaError(
            f"could not submit the {kind.upper()} worker jobs with "
            f"`{SUBMIT_COMMANDS[kind]}`: {first}; check the job script with "
            f"`avda sweep {spec_name} --cluster {kind} --job-script`"
        ) from exc


def _grow(cluster: Any, count: int, used: frozenset = frozenset()) -> None:
    """Start the workers (SLURM/PBS: submit the jobs) of a Dask ``SpecCluster`` up to ``count``
    now, in this thread; the new ones get names not in ``used`` (jobs it had before)."""
    while len(cluster.worker_spec) < count:
        cluster.worker_spec.update(_new_worker(cluster, used))
    cluster.sync(cluster._correct_state)


def _new_worker(cluster: Any, used: frozenset) -> dict[str, Any]:
    """``cluster.new_worker_spec()``, under another name when it offers one in ``used``.

    SpecCluster offers the lowest free name from its counter, so a name a lost job had (its
    lost-worker timer, 15 s, would close the new job that got it). Neither distributed
    (2026.8) nor dask-jobqueue (0.9) has a public way to advance that counter (``_i``) or to
    ask for a name not used before; ``worker_spec`` and ``new_worker_spec()`` are public, so
    the new job takes the offered name with ``-again{N}`` added (``SLURMCluster-1-again1``)."""
    ((name, spec),) = cluster.new_worker_spec().items()
    taken = used | set(cluster.worker_spec)
    fresh, again = name, 0
    while fresh in taken:
        again += 1
        fresh = f"{name}-again{again}"
    return {fresh: spec}


def restart_workers(cluster: Any, count: int, kind: str, spec_name: str = "SPEC") -> None:
    """Start ``count`` workers anew on a (local) cluster that lost them all: the old ones are
    closed first. (A SLURM/PBS sweep uses :class:`JobRestart`, which keeps queued jobs.)"""
    cluster.worker_spec.clear()
    try:
        cluster.sync(cluster._correct_state, callback_timeout=CLOSE_SECONDS)
    except Exception as exc:  # a job already gone: what matters is the new ones
        log.debug("closing the lost workers: %s: %s", type(exc).__name__, exc)
    if kind == "local":
        _grow(cluster, count)
    else:
        start_jobs(cluster, count, kind, spec_name)


QUEUE_POLL_SECONDS = 10.0
"""How often a SLURM/PBS sweep asks the scheduler (``squeue`` / ``qstat``) whether the jobs none
of whose workers connected yet are still in its queue."""
QUEUE_STATE_SECONDS = 30.0
"""Longest wait for ``squeue`` / ``qstat`` to answer (no answer: the jobs count as queued)."""
SLURM_ENDED = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
     "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"}
)  # fmt: skip
"""``squeue`` states of a job whose batch script has ended (requeued jobs show PENDING)."""
PBS_ENDED = frozenset({"C", "E", "F", "X"})
"""``qstat`` job states of a job whose script has ended (C: Torque's completed, E: exiting)."""
SLURM_PENDING = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
)
"""``squeue`` states of a job still waiting to start (CONFIGURING: its nodes boot)."""
PBS_PENDING = frozenset({"Q", "H", "W", "T"})
"""``qstat`` states of a job still waiting to start (queued, held, waiting, in transit)."""
QUEUE_REPORT_SECONDS = 600.0
"""How often a sweep waiting on pending jobs past ``worker_timeout`` says so (and why)."""


def _run_queue_command(command: list[str]) -> Any:
    import subprocess

    # squeue's SQUEUE_STATES / SQUEUE_PARTITION / SQUEUE_USERS... (a user's shell profile)
    # filter even the jobs -j names: a queued job it hides would count as ended
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=QUEUE_STATE_SECONDS,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s: %s: %s", command[0], type(exc).__name__, exc)
        return None


def queue_states(kind: str, job_ids: list[str]) -> dict[str, str] | None:
    """The scheduler's state of each of these jobs (``squeue -h -j ID,... -o '%i %T %r'`` /
    ``qstat -f ID ...``) as it shows it (PENDING, RUNNING, FAILED; Q, R, F), ``""`` for a job it
    no longer knows (see :func:`job_ended`). ``None`` when the command cannot be run or says
    something else than "no such job": the jobs then count as still queued."""
    jobs = queue_jobs(kind, job_ids)
    return None if jobs is None else {job_id: state for job_id, (state, _) in jobs.items()}


def queue_jobs(kind: str, job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """:func:`queue_states` with the scheduler's reason for each job's state: squeue's
    ``%r`` (Priority, Resources, ...; ``None`` for a running job), qstat's ``comment``
    (``""`` when it gives none)."""
    if not job_ids:
        return {}
    if kind == "slurm":
        done = _run_queue_command(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %r"])
        if done is None:
            return None
        if done.returncode != 0:  # every id unknown (gone) is an error to squeue
            if "invalid job id" in done.stderr.lower():
                return dict.fromkeys(job_ids, ("", ""))
            return None
        rows = [line.split(None, 2) for line in done.stdout.splitlines()]
        shown = {
            row[0]: (row[1], row[2].strip() if len(row) > 2 else "") for row in rows if len(row) > 1
        }
        return {j: shown.get(j, ("", "")) for j in job_ids}
    done = _run_queue_command(["qstat", "-f", *job_ids])
    if done is None:
        return None
    shown = {}
    for block in re.split(r"^Job Id:\s*", done.stdout, flags=re.MULTILINE)[1:]:
        job = block.split(None, 1)[0].split(".", 1)[0] if block.strip() else ""
        state = re.search(r"^\s*job_state\s*=\s*(\S+)", block, flags=re.MULTILINE)
        comment = re.search(r"^\s*comment\s*=\s*(.*)$", block, flags=re.MULTILINE)
        shown[job] = (state.group(1) if state else "?", comment.group(1).strip() if comment else "")
    states: dict[str, tuple[str, str]] = {}
    for job_id in job_ids:
        number = job_id.split(".", 1)[0]
        if number in shown:
            states[job_id] = shown[number]
            continue
        said = [line for line in done.stderr.splitlines() if number in line]
        if not said or not re.search(r"unknown job id|has finished", said[0], flags=re.I):
            return None  # another error (the server did not answer): nothing is known
        states[job_id] = ("", "")
    return states


def job_ended(kind: str, state: str) -> bool:
    """Whether a job in this :func:`queue_states` state has left the queue (its script ended)."""
    return not state or state in (SLURM_ENDED if kind == "slurm" else PBS_ENDED)


def job_pending(kind: str, state: str) -> bool:
    """Whether a job in this :func:`queue_states` state still waits in the queue to start."""
    return state in (SLURM_PENDING if kind == "slurm" else PBS_PENDING)


def job_log(job: Any, kind: str) -> str:
    """The file a dask-jobqueue job writes its errors to (its ``#SBATCH -e`` / ``#PBS -e``)."""
    job_id, name = str(getattr(job, "job_id", "") or ""), getattr(job, "job_name", None)
    folder = getattr(job, "log_directory", None)
    if kind == "slurm":
        if folder is None:  # sbatch's default: both streams, in the folder it was run in
            return os.path.join(os.getcwd(), f"slurm-{job_id}.out")
        return os.path.join(folder, f"{name or 'worker'}-{job_id}.err")
    number = job_id.split(".", 1)[0]
    return os.path.join(folder or os.getcwd(), f"{name or 'STDIN'}.e{number}")


def _log_tail(path: str) -> str:
    """The last line with text of a job's log ("" when there is none to read)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 8192))
            lines = file.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    said = [line.strip() for line in lines if line.strip()]
    return said[-1][:200] if said else ""


SLURM_CAUSES = {
    "OUT_OF_MEMORY": "out of memory (raise cluster.memory)",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "CANCELLED": "cancelled (scancel, or the site)",
    "TIMEOUT": "its walltime ran out before its worker started",
    "DEADLINE": "its deadline passed",
    "PREEMPTED": "preempted",
}


@dataclasses.dataclass(frozen=True)
class JobEnd:
    """A SLURM/PBS job that left the queue before any of its workers connected."""

    name: str  # its name in the cluster's worker_spec
    job_id: str
    log: str
    cause: str

    def text(self, kind: str) -> str:
        said = f"{kind.upper()} job {self.job_id} ended before its Dask worker connected"
        return f"{said} ({self.cause})"


def _start_cause(state: str, tail: str) -> str:
    """The likely cause of a job's end before its worker connected, with its log's last line."""
    ended = f"state {state}; " if state else ""
    said = f"its log ends {tail!r}" if tail else "its log is empty or missing"
    if state in SLURM_CAUSES:
        cause = SLURM_CAUSES[state]
    elif re.search(r"out of memory|oom[-_ ]kill|memoryerror|\bkilled\b", tail, flags=re.I):
        cause = "out of memory (raise cluster.memory)"
    else:
        cause = (
            "its job script failed before starting the worker: a module load, a python or "
            "avda missing there, an import error?"
        )
    return f"{cause}; {ended}{said}"


class JobRecord:
    """The worker names a SLURM/PBS cluster's scheduler has seen connect, and those connected
    now (a :class:`distributed.diagnostics.plugin.SchedulerPlugin` of its own scheduler): a job
    none of whose workers ever connected is still waiting in the queue (or cannot start)."""

    name = "avda-job-record"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connected: set[str] = set()
        self._alive: dict[str, str] = {}  # worker address -> worker name

    def add_worker(self, scheduler: Any, worker: str) -> None:
        name = str(scheduler.workers[worker].name)
        with self._lock:
            self._connected.add(name)
            self._alive[worker] = name

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        with self._lock:
            self._alive.pop(worker, None)

    def names(self) -> tuple[set[str], set[str]]:
        """The worker names that ever connected, and those connected now."""
        with self._lock:
            return set(self._connected), set(self._alive.values())


def _record_plugin(record: JobRecord) -> Any:
    """A scheduler plugin that tells ``record`` of each worker that comes and goes."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Recorder(SchedulerPlugin):
        name = JobRecord.name

        def add_worker(self, scheduler: Any, worker: str) -> None:
            record.add_worker(scheduler, worker)

        def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
            record.remove_worker(scheduler, worker)

    return Recorder()


def _job_names(cluster: Any, workers: set[str]) -> set[str]:
    """The jobs (``worker_spec`` names) of these worker names (a job of ``processes: N`` runs
    the workers ``JOB-0`` ... ``JOB-{N-1}``)."""
    jobs = {}
    for job, spec in cluster.worker_spec.items():
        for suffix in spec.get("group", [""]) if isinstance(spec, dict) else [""]:
            jobs[f"{job}{suffix}"] = job
    return {jobs[name] for name in workers if name in jobs}


class JobRestart:
    """Submits again the jobs of a SLURM/PBS cluster left without workers whose workers
    connected and died (cancelled, past their walltime, preempted), and leaves the jobs none
    of whose workers ever connected in the queue: cancelling them would lose their place in
    a busy queue. ``waiting()`` counts those.

    A job that left the queue before any of its workers connected (its script died at start: a
    module load, no python, out of memory, a node failure) is not waiting: ``ended_at_start()``
    finds it (asking ``squeue`` / ``qstat`` every ``QUEUE_POLL_SECONDS``) and ``replace()``
    submits it again; the jobs submitted so are in ``start_retries``."""

    def __init__(self, cluster: Any, count: int, kind: str, spec_name: str = "SPEC") -> None:
        self.cluster, self.count, self.kind, self.spec_name = cluster, count, kind, spec_name
        self.record = JobRecord()
        cluster.scheduler.add_plugin(_record_plugin(self.record), name=JobRecord.name)
        self.submitted: set[str] = set()  # every job name it had: a new job gets another
        self.start_retries: set[str] = set()  # jobs in place of ones that ended at start
        self._asked = float("-inf")  # when the scheduler was last asked (time.monotonic)
        self._asked_dead = float("-inf")  # ... about the jobs whose workers died
        self.job_ids: dict[str, str] = {}  # each job's id, kept after the cluster drops it
        self.logs: dict[str, str] = {}  # each job's log file, kept so too
        self.dead_states: dict[str, str] = {}  # the queue's last word on the dead jobs
        self.queued: dict[str, tuple[str, str]] = {}  # ... on the waiting ones: state, reason

    def start(self) -> None:
        """Submit the cluster's jobs (the first time)."""
        start_jobs(self.cluster, self.count, self.kind, self.spec_name)
        self.submitted |= set(self.cluster.worker_spec)
        self._remember_ids()

    def _remember_ids(self) -> None:
        for name, job in list(self.cluster.workers.items()):
            job_id = getattr(job, "job_id", None)
            if job_id:
                self.job_ids[name] = str(job_id)
                self.logs[name] = job_log(job, self.kind)

    def _split(self) -> tuple[set[str], set[str]]:
        """The jobs that started (a worker connected) and have no worker now, and the jobs
        that never started."""
        connected, alive = self.record.names()
        started = _job_names(self.cluster, connected)
        running = _job_names(self.cluster, alive)
        jobs = set(self.cluster.worker_spec)
        # a job the cluster dropped (its lost worker closed) is not in the queue either
        gone = {job for job in jobs if job not in self.cluster.workers}
        dead = ((started - running) | gone) & jobs
        return dead, jobs - dead - started

    def waiting(self) -> int:
        """Jobs none of whose workers ever connected: waiting in the queue (or failing at
        start where the scheduler cannot be asked)."""
        return len(self._split()[1])

    def to_submit(self) -> int:
        """Jobs a restart would submit: the dead ones, and those missing (dropped)."""
        dead, _ = self._split()
        return len(dead) + max(0, self.count - len(self.cluster.worker_spec))

    def ended_at_start(self) -> list[JobEnd]:
        """The jobs none of whose workers connected that have left the scheduler's queue (at
        most every ``QUEUE_POLL_SECONDS``; none when ``squeue`` / ``qstat`` cannot tell)."""
        now = time.monotonic()
        if now - self._asked < QUEUE_POLL_SECONDS:
            return []
        self._asked = now
        _, waiting = self._split()
        self._remember_ids()  # the ids of the jobs the cluster holds now
        known = [n for n in sorted(waiting) if n in self.cluster.workers and n in self.job_ids]
        ids = {n: self.job_ids[n] for n in known}
        jobs = queue_jobs(self.kind, sorted(set(ids.values())))
        self.queued = jobs or {}
        if not jobs:
            return []
        states = {job_id: state for job_id, (state, _) in jobs.items()}
        _, waiting = self._split()  # a worker that connected meanwhile: its job started
        ended = []
        for name, job_id in ids.items():
            if name in waiting and job_ended(self.kind, states.get(job_id, "?")):
                log_file = job_log(self.cluster.workers.get(name), self.kind)
                cause = _start_cause(states[job_id], _log_tail(log_file))
                ended.append(JobEnd(name, job_id, log_file, cause))
        return ended

    def pending(self) -> dict[str, str]:
        """The jobs none of whose workers connected that the queue showed pending when last
        asked (by ``ended_at_start``): each job id and the queue's reason (or state). Empty
        when the queue cannot tell."""
        _, waiting = self._split()
        said = {}
        for name in sorted(waiting, key=lambda n: self.job_ids.get(n, n)):
            state, reason = self.queued.get(self.job_ids.get(name, ""), ("", ""))
            if job_pending(self.kind, state):
                said[self.job_ids[name]] = reason if reason and reason != "None" else state
        return said

    def ended_after_start(self) -> set[str]:
        """The jobs whose workers connected and are gone, when the scheduler's queue says that
        every one of them has ended (asked at most every ``QUEUE_POLL_SECONDS``); none when a
        job still runs there (a worker cut off from the scheduler) or the queue cannot tell.
        The cluster cancels a lost worker's job itself after ``lost-worker-timeout`` (15 s):
        the queue then reports it ended too, and the job is submitted again from then on."""
        dead, _ = self._split()
        now = time.monotonic()
        if not dead or now - self._asked_dead < QUEUE_POLL_SECONDS:
            return set()
        self._asked_dead = now
        self._remember_ids()
        ids = {name: self.job_ids.get(name) for name in dead}
        if not all(ids.values()):  # a job without an id to ask the queue about
            return set()
        states = queue_states(self.kind, sorted({str(job_id) for job_id in ids.values()}))
        if not states:
            return set()
        if not all(job_ended(self.kind, states.get(str(i), "?")) for i in ids.values()):
            return set()
        self.dead_states = {name: states.get(str(job_id), "") for name, job_id in ids.items()}
        return dead

    def ended_text(self, jobs: set[str]) -> str:
        """These jobs (ended, as ``ended_after_start`` found them), each with its state, log
        and the log's last line, in one line (the first 3, then a count)."""
        said = []
        for name in sorted(jobs, key=lambda n: self.job_ids.get(n, n))[:3]:
            state = self.dead_states.get(name, "")
            log_file = self.logs.get(name, "")
            tail = _log_tail(log_file) if log_file else ""
            ends = f"its log ends {tail!r}" if tail else "its log is empty or missing"
            state_text = f"state {state}" if state else "no longer in the queue"
            said.append(
                f"{self.kind.upper()} job {self.job_ids.get(name, '?')} ended ({state_text}; "
                f"see its log {log_file or '?'}; {ends})"
            )
        more = f" (and {len(jobs) - 3} more job(s))" if len(jobs) > 3 else ""
        return "; ".join(said) + more

    def replace(self, dead: set[str], *, at_start: bool = False) -> None:
        """Cancel these jobs (one that ended is cancelled again: no harm) and submit jobs up to
        ``count`` in their place (``at_start``: in place of jobs that ended at start)."""
        for job in dead:
            self.cluster.worker_spec.pop(job, None)
        try:
            self.cluster.sync(self.cluster._correct_state, callback_timeout=CLOSE_SECONDS)
        except Exception as exc:  # a job already gone: what matters is the new ones
            log.debug("closing the lost workers: %s: %s", type(exc).__name__, exc)
        before = set(self.cluster.worker_spec)
        start_jobs(self.cluster, self.count, self.kind, self.spec_name, frozenset(self.submitted))
        new = set(self.cluster.worker_spec) - before
        self.submitted |= new
        self._remember_ids()
        if at_start:
            self.start_retries |= new

    def drop(self, jobs: set[str]) -> None:
        """Forget jobs that ended at start (no new job in their place, until a restart)."""
        for job in jobs:
            self.cluster.worker_spec.pop(job, None)
        with contextlib.suppress(Exception):
            self.cluster.sync(self.cluster._correct_state, callback_timeout=CLOSE_SECONDS)

    def __call__(self) -> tuple[int, int]:
        """Submit the dead jobs again; returns (jobs submitted again, jobs left waiting)."""
        dead, waiting = self._split()
        before = set(self.cluster.worker_spec) - dead
        self.replace(dead)
        return len(set(self.cluster.worker_spec) - before), len(waiting)


MAX_RESTARTS = 2
"""Times a sweep starts its cluster's workers (SLURM/PBS: submits its jobs) again after it was
left without any for ``worker_timeout`` seconds while runs wait, before it gives up."""


class WorkerWatch:
    """Notices a cluster left without workers while runs wait (every job cancelled, past its
    walltime or preempted: Dask would wait for one forever). After ``timeout`` seconds without
    a worker it calls ``restart`` (at most ``restarts`` times; ``None``: workers it did not
    start), then gives up with an :class:`AvdaError` naming ``where`` and the ``hint``. A
    SLURM/PBS cluster without a worker is restarted at once, not after ``timeout``, when the
    scheduler's queue says that every job whose workers died has ended
    (:meth:`JobRestart.ended_after_start`).

    A SLURM/PBS ``restart`` (:class:`JobRestart`) submits again only the jobs whose workers
    died and returns (jobs submitted again, jobs still waiting in the queue); the give-up line
    counts the jobs still waiting (``restart.waiting()``). With every job still waiting there is
    nothing to submit: no restart is made (none of the ``restarts`` is used), the sweep gives up.

    ``check_jobs()`` (called by ``check()``, and while the first worker is waited for) submits
    again at once the jobs that left the queue before their workers connected (one of the
    ``restarts`` for those of one poll); one that ends so again (a job submitted so), or any
    with no restart left, fails the sweep at once in one line naming the job, its log and the
    likely cause; while other workers train, or other jobs still wait in the queue (those just
    submitted again among them), that line is a warning and the sweep goes on without the job
    (no job in its place until a restart). Only the jobs ending so again are dropped: a job of
    the same poll ending so the first time is submitted again while a restart is left.

    ``hold()`` keeps a SLURM/PBS cluster without a worker waiting past ``timeout`` while the
    queue shows jobs pending (a busy queue), saying so every ``QUEUE_REPORT_SECONDS``, until
    ``queue_timeout`` (``None``: no limit)."""

    def __init__(
        self,
        client: Any,
        timeout: float,
        *,
        where: str,
        hint: str,
        restart: Any = None,
        restarts: int | None = None,
        queue_timeout: float | None = None,
        queue_timeout_name: str = "cluster.queue_timeout",
        spec_queue_timeout: float | None = None,
    ) -> None:
        self.client, self.timeout, self.where, self.hint = client, timeout, where, hint
        self.queue_timeout_name = queue_timeout_name  # where queue_timeout was given
        self.spec_queue_timeout = spec_queue_timeout  # what leaving --queue-timeout out gives
        self.restart = restart
        self.restarts = MAX_RESTARTS if restarts is None else restarts
        self.restarted = 0
        self.since: float | None = None
        self.queue_timeout = queue_timeout
        self.began: float | None = None  # when the cluster was last left without a worker
        self._reported = float("-inf")  # when pending jobs were last reported
        self._held = float("-inf")  # when jobs were last seen pending in the queue
        self.spec_name, self.kind = "SPEC", ""
        if isinstance(restart, JobRestart):
            self.spec_name, self.kind = restart.spec_name, restart.kind

    def _workers(self) -> int | None:
        try:
            return len(self.client.nthreads())
        except (OSError, TimeoutError) as exc:
            log.debug("could not count the Dask workers: %s: %s", type(exc).__name__, exc)
            return None

    def check_jobs(self) -> bool:
        """Submit again the SLURM/PBS jobs that left the queue before their workers connected,
        or give up (see the class); True when it submitted jobs."""
        if not isinstance(self.restart, JobRestart):
            return False
        ended = self.restart.ended_at_start()
        if not ended:
            return False
        again = [end for end in ended if end.name in self.restart.start_retries]
        left = self.restarted < self.restarts
        # a job that ended so a second time is dropped, and with no restart left every one;
        # the first-time ones are submitted again (one restart for them all)
        dropped = again if left else ended
        first = [end for end in ended if end not in dropped]
        if first:
            self.restarted += 1
            # before the drop: the dropped jobs still count, no job is submitted in their place
            self.restart.replace({end.name for end in first}, at_start=True)
            for end in first:
                log.warning(
                    "%s; its log: %s: submitted again (%d of %d)",
                    *(end.text(self.kind), end.log, self.restarted, self.restarts),
                )
            if self.since is not None:
                self.since = time.monotonic()
        if dropped:
            end = dropped[0]
            more = f" (and {len(dropped) - 1} more job(s))" if len(dropped) > 1 else ""
            why = (
                "it was submitted in place of a job that ended so too"
                if end in again
                else f"no restart left ({self.restarted} of {self.restarts} used)"
            )
            line = (
                f"{end.text(self.kind)}{more}, giving up: {why}; see its log {end.log} and "
                f"the job script (`avda sweep {self.spec_name} --cluster {self.kind} "
                "--job-script`)"
            )
            self.restart.drop({end.name for end in dropped})
            workers = self._workers()
            waiting = self.restart.waiting()  # jobs still in the queue, the dropped ones gone
            if workers == 0 and not waiting:
                raise AvdaError(
                    f"{line}; runs that finished are kept: run the same command again to "
                    "train the others"
                )
            going_on = (
                f"going on with the {workers} worker(s) connected"
                if workers
                else f"going on waiting for the {waiting} job(s) still in the queue"
                if waiting
                else "going on with the workers connected"  # the count could not be read
            )
            log.warning("%s; %s", line, going_on)
        return bool(first)

    def _queue_timeout_fallback(self) -> str:
        """What leaving the queue timeout out gives: no limit, or the spec's (a flag's)."""
        spec = self.spec_queue_timeout
        if self.queue_timeout_name.startswith("--") and spec is not None:
            return f" for the spec's cluster.queue_timeout, {spec:g} s"
        return " to wait as long as the queue says they are pending"

    def hold(self, began: float) -> bool:
        """Whether jobs of a SLURM/PBS cluster without a worker still wait in the queue as it
        says (pending: a busy queue), so that the wait goes on past ``timeout``: said every
        ``QUEUE_REPORT_SECONDS`` once ``timeout`` has passed since ``began``; past
        ``queue_timeout`` (and ``timeout``) the sweep gives up."""
        if not isinstance(self.restart, JobRestart):
            return False
        pending = self.restart.pending()
        now = time.monotonic()
        waited = now - began
        if not pending or waited < self.timeout:
            return bool(pending)
        jobs = "; ".join(f"{job_id}: {reason}" for job_id, reason in list(pending.items())[:5])
        more = f"; and {len(pending) - 5} more" if len(pending) > 5 else ""
        said = (
            f"{len(pending)} {self.kind.upper()} job(s) still pending in the queue ({jobs}{more}), "
            f"no Dask worker in {self.where} for {waited:.0f} s"
        )
        if self.queue_timeout is not None and waited >= self.queue_timeout:
            raise AvdaError(
                f"{said}, giving up: {self.queue_timeout_name} is {self.queue_timeout:g} s (raise "
                f"it, or leave it out{self._queue_timeout_fallback()}); runs that finished are "
                "kept: run the same command again to train the others"
            )
        if now - self._reported >= QUEUE_REPORT_SECONDS:
            self._reported = now
            limit = f"{self.queue_timeout:g} s" if self.queue_timeout is not None else "none"
            log.warning(
                "%s: waiting on while the queue says they are pending (%s: %s)",
                said,
                self.queue_timeout_name,
                limit,
            )
        return True

    def check(self) -> None:
        """Call now and then while runs wait: raises once the cluster has given up."""
        now = time.monotonic()
        if self.client.status != "running":  # a lost scheduler: its runs come back lost
            return
        self.check_jobs()
        workers = self._workers()
        if workers is None:
            return
        if workers:
            self.since = self.began = None
            self._held = float("-inf")
            return
        if self.since is None:
            self.since = now
        if self.began is None:
            self.began = now
        if self.hold(self.began):  # jobs pending in the queue: the give-up counts from now
            self._held = now
        left = self.restart is not None and self.restarted < self.restarts
        # SLURM/PBS: the jobs whose workers died have left the queue: no worker of theirs can
        # come back, so they are submitted again now instead of after the timeout (with no
        # restart left and no job waiting in the queue: the sweep gives up now)
        jobs = isinstance(self.restart, JobRestart)
        ended = jobs and (left or not self.restart.waiting()) and self.restart.ended_after_start()
        if ended and not left:
            again = f" (started again {self.restarted} time(s))" if self.restarted else ""
            raise AvdaError(
                f"no Dask worker left in {self.where} and its jobs left the queue{again}, "
                f"giving up: no restart left ({self.restarted} of {self.restarts} used); "
                f"{self.restart.ended_text(ended)}; runs that finished are kept: run the same "
                "command again to train the others"
            )
        if now - self.since < self.timeout and not ended:
            return
        # every job still waiting in the queue: a restart would submit nothing (and used to
        # count as one of the restarts): give up as the first wait does
        useless = isinstance(self.restart, JobRestart) and not self.restart.to_submit()
        if left and not useless:
            self.restarted += 1
            if not isinstance(self.restart, JobRestart):
                log.warning(
                    "no Dask worker left in %s for %g s (jobs ended: cancelled, walltime, "
                    "preempted?): starting its workers again (%d of %d)",
                    *(self.where, self.timeout, self.restarted, self.restarts),
                )
                self.restart()
            else:
                dead, waiting = self.restart()
                log.warning(
                    "no Dask worker left in %s %s: %s%s (%d of %d)",
                    self.where,
                    "and its jobs left the queue" if ended else f"for {self.timeout:g} s",
                    f"submitted {dead} job(s) again whose workers ended (cancelled, walltime, "
                    "preempted?)",
                    f"; {waiting} job(s) still waiting in the queue, left there" if waiting else "",
                    *(self.restarted, self.restarts),
                )
            self.since = time.monotonic()
            return
        if now - max(self.since, self._held) < self.timeout:
            return
        again = f" (started again {self.restarted} time(s))" if self.restarted else ""
        waiting = self.restart.waiting() if isinstance(self.restart, JobRestart) else 0
        queued = (
            f"{waiting} job(s) still waiting in the queue: raise cluster.worker_timeout (or "
            "--worker-timeout) for a busy queue; "
            if waiting
            else ""
        )
        raise AvdaError(
            f"no Dask worker left in {self.where} for {self.timeout:g} s{again}, giving up; "
            f"{queued}{self.hint}; runs that finished are kept: run the same command again "
            "to train the others"
        )


def wait_for_worker(
    client: Any,
    timeout: float,
    *,
    where: str,
    hint: str,
    poll: Any = None,
    hold: Any = None,
) -> None:
    """Wait until a first worker joins; give up with one line after ``timeout`` seconds.

    ``poll`` (a SLURM/PBS sweep's :meth:`WorkerWatch.check_jobs`) is called every
    2 s meanwhile; it may raise, and the wait starts again when it returns True
    (it submitted jobs again). ``hold`` (:meth:`WorkerWatch.hold`, given the time the wait
    began) is called then too: while it returns True (jobs pending in the queue) the
    ``timeout`` counts from now; it may raise."""
    began = time.monotonic()
    deadline = began + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            client.wait_for_workers(1, timeout=max(0.01, min(left, 2.0)) if poll else timeout)
            return
        except TimeoutError:
            if poll is not None and poll():
                deadline = time.monotonic() + timeout
            elif hold is not None and hold(began):
                deadline = max(deadline, time.monotonic() + timeout)
            elif poll is None or time.monotonic() >= deadline:
                raise AvdaError(
                    f"no Dask worker joined {where} within {timeout:g} s, giving up; {hint}"
                ) from None


def _no_worker_hint(kind: str, spec: SweepSpec) -> str:
    logs = _logs_folder(spec.cluster.log_directory)
    return (
        f"check that the jobs started (`{QUEUE_COMMANDS[kind]}`), their logs in {logs} and "
        f"the job script (`avda sweep {_spec_name(spec)} --cluster {kind} --job-script`); jobs "
        "waiting in the queue need a longer cluster.worker_timeout (or --worker-timeout)"
    )


def _spec_name(spec: SweepSpec) -> str:
    """The spec file as the user can pass it again (``SPEC`` for a spec made in Python)."""
    return spec.source if spec.source and spec.source != "<spec>" else "SPEC"


def _logs_folder(log_directory: str | None) -> str:
    """Where the jobs' logs are: ``cluster.log_directory``, else where the sweep was started."""
    return log_directory or f"{os.getcwd()} (the submit command's default)"


def _lost_workers_hint(kind: str, log_directory: str | None) -> str:
    if kind == "local":
        return "its worker processes died (out of memory?): see the messages above"
    logs = _logs_folder(log_directory)
    return (
        "its jobs ended (cancelled, past their walltime, preempted) or cannot start: see the "
        f"jobs' logs in {logs} and `{QUEUE_COMMANDS[kind]}`; a walltime too short for a run "
        "needs a longer cluster.walltime"
    )


def _close_quietly(cluster: Any) -> None:
    try:
        cluster.close(timeout=CLOSE_SECONDS)
    except Exception as exc:  # e.g. a job that never started: keep the error that matters
        log.debug("could not stop the Dask cluster cleanly (%s: %s)", type(exc).__name__, exc)


def job_script(spec: SweepSpec, cluster: str | None = None) -> str:
    """The SLURM / PBS job script ``avda sweep --cluster KIND`` would submit (nothing is run,
    nothing is written: not even the log folder the script names)."""
    kind = _cluster_kind(spec, None, cluster)
    if kind == "local":
        raise ConfigError("--job-script needs --cluster slurm or pbs (or cluster.kind in the spec)")
    check_cluster(spec, kind)
    import dask.config

    # dask-jobqueue makes the log folder when its cluster is built: a dry print must not, so
    # the script is built with a throwaway folder in its place, then named as the spec says
    logs = spec.cluster.log_directory or dask.config.get(f"jobqueue.{kind}.log-directory", None)
    with tempfile.TemporaryDirectory(prefix="avda-job-script-") as stand_in:
        cluster_spec = dataclasses.replace(spec.cluster, log_directory=stand_in if logs else None)
        jobqueue = make_jobqueue_cluster(cluster_spec, kind)
        try:
            script = str(jobqueue.job_script())
        finally:
            _close_quietly(jobqueue)
    return script.replace(stand_in, str(logs)) if logs else script


@contextlib.contextmanager
def connect(
    spec: SweepSpec,
    *,
    scheduler: str | None = None,
    cluster: str | None = None,
    worker_timeout: float | None = None,
    queue_timeout: float | None = None,
    runs: int | None = None,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A Dask client with at least one worker, and the submit options for this spec; closes
    what it started. ``worker_timeout`` (default: the spec's ``cluster.worker_timeout``): the
    seconds to wait for the first worker before giving up with an error; ``queue_timeout``
    (SLURM/PBS; default: the spec's ``cluster.queue_timeout``): the seconds, in all, to wait
    while the queue shows the jobs pending. ``runs``: the runs to train; a cluster it starts
    has no more worker processes than those (local workers, or SLURM/PBS jobs of
    ``cluster.processes`` each), so that none idles holding cores, GPUs or a job's hours."""
    from distributed import Client, LocalCluster

    quiet_dask_logs()
    quiet_lost_scheduler_logs()  # the sweep reports the runs a lost scheduler took with it
    kind = _cluster_kind(spec, scheduler, cluster)
    timeout = worker_timeout or spec.cluster.worker_timeout or DEFAULT_WORKER_TIMEOUT
    if scheduler is not None:
        client = connect_scheduler(scheduler, timeout=min(CONNECT_SECONDS, timeout))
        try:
            wait_for_worker(
                client,
                timeout,
                where=f"the scheduler at {scheduler}",
                hint=f"start workers with `dask worker {scheduler}`",
            )
            watch = WorkerWatch(
                client,
                timeout,
                where=f"the scheduler at {scheduler}",
                hint=f"start workers with `dask worker {scheduler}`",
            )
            threads = scheduler_torch_threads(client)
            yield client, {"torch_threads": threads, "resources": None, "watch": watch}
        finally:
            client.close()
        return
    count = cluster_size(spec.cluster, kind, runs)  # local workers, or jobs
    if kind == "local":
        with workers_ignore_interrupt():  # Ctrl-C is this process's to report
            local = LocalCluster(
                n_workers=count,
                threads_per_worker=1,
                processes=True,
                memory_limit=spec.cluster.memory or "auto",
                dashboard_address=":0",
                local_directory=spec.cluster.local_directory,
            )
        options = {"torch_threads": threads_per_worker(count), "resources": None}
    else:
        check_submit_command(kind)
        local = make_jobqueue_cluster(spec.cluster, kind)
        cores_per_worker = max(1, (spec.cluster.cores or 1) // spec.cluster.processes)
        options = {"torch_threads": cores_per_worker, "resources": {"train": 1}}
    try:
        restart: Any = lambda: restart_workers(local, count, kind, _spec_name(spec))  # noqa: E731
        if kind != "local":
            restart = JobRestart(local, count, kind, _spec_name(spec))
            restart.start()
        client = Client(local)
        quiet_worker_logs(client, local=kind == "local")
        try:
            where = "the local cluster" if kind == "local" else f"the {kind.upper()} cluster"
            watch = WorkerWatch(
                client,
                timeout,
                where=where,
                hint=_lost_workers_hint(kind, spec.cluster.log_directory),
                restart=restart,
                queue_timeout=queue_timeout or spec.cluster.queue_timeout,
                queue_timeout_name="--queue-timeout" if queue_timeout else "cluster.queue_timeout",
                spec_queue_timeout=spec.cluster.queue_timeout,
            )
            if kind != "local":
                hint = _no_worker_hint(kind, spec)
                wait_for_worker(
                    client,
                    timeout,
                    where=where,
                    hint=hint,
                    poll=watch.check_jobs,
                    hold=watch.hold,
                )
            options["watch"] = watch
            yield client, options
        finally:
            client.close()
    finally:
        _close_quietly(local)


def _cluster_kind(spec: SweepSpec, scheduler: str | None, cluster: str | None) -> str:
    if scheduler is not None and cluster is not None:
        raise ConfigError("give either --scheduler ADDRESS or --cluster KIND, not both")
    if scheduler is not None and scheduler.split(":", 1)[0] == "local":
        # avda extract's local / local:N; Dask read it as the host 'local' and the sweep
        # waited 30 s to connect to tcp://local:N
        raise ConfigError(
            f"--scheduler {scheduler}: avda sweep takes a running scheduler's address here "
            "(tcp://HOST:8786); for a local cluster leave --scheduler out (or give --cluster "
            "local) and set its worker processes with cluster.workers in the spec"
        )
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
    cores = client.run(available_cores, on_error="return")
    broken = {a: c for a, c in cores.items() if isinstance(c, BaseException)}
    if broken:
        address, error = next(iter(broken.items()))
        raise ConfigError(
            f"Dask worker {address} cannot run avda ({type(error).__name__}: {error}"
            f"{f'; and {len(broken) - 1} more worker(s)' if len(broken) > 1 else ''}); "
            "install avda, the same version, in every worker's environment"
        )
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
# The options of `avda sweep` that the sweep's refusals and records name, as run_sweep's
# keywords: a Python caller passed cluster=, not --cluster (the CLI calls run_sweep.__wrapped__,
# whose messages keep the options; a command to run, `avda sweep SPEC --cluster slurm
# --job-script`, stays a command).
RUN_SWEEP_KEYWORDS = {
    "o": "out",
    "out": "out",
    "scheduler": "scheduler",
    "cluster": "cluster",
    "worker-timeout": "worker_timeout",
    "queue-timeout": "queue_timeout",
}


@keyword_errors(functools.partial(keywords, table=RUN_SWEEP_KEYWORDS))
def run_sweep(
    spec: SweepSpec | Mapping[str, Any] | str | Path,
    *,
    out: str | Path | None = None,
    scheduler: str | None = None,
    cluster: str | None = None,
    progress: bool = True,
    worker_timeout: float | None = None,
    queue_timeout: float | None = None,
) -> SweepSummary:
    """Run every task of ``spec`` (a YAML file, or the same as a dict: relative paths under the
    current folder) that is not complete yet; the summary lists what failed.

    ``worker_timeout``: seconds to wait for the first Dask worker (default: the spec's
    ``cluster.worker_timeout``, 300 s) before giving up with an :class:`AvdaError`.
    ``queue_timeout``: SLURM/PBS, seconds to wait in all while the queue shows the jobs pending
    (default: the spec's ``cluster.queue_timeout``, no limit); refused for a local cluster or a
    ``scheduler``."""
    began = time.perf_counter()
    if isinstance(spec, Mapping):  # a dict was refused with a TypeError of os.fspath
        spec = parse_spec(dict(spec), source="spec", out_given=out is not None)
    elif not isinstance(spec, SweepSpec):
        spec = load_spec(spec, out_given=out is not None)  # its out: replaced: not checked
    out_dir = check_output_folder(out, "--out", *RUNS_OUTPUT) if out is not None else spec.out
    kind = _cluster_kind(spec, scheduler, cluster)  # usage errors before any work
    check_queue_timeout(queue_timeout, kind, scheduler)
    out_dir = Path(os.path.abspath(out_dir)) if out_dir is not None else None  # no ".."
    if out_dir is None:
        where = "the spec" if spec.source in ("spec", "<spec>") else spec.source  # or a dict
        # --out=DIR is out=DIR in a Python caller's words (wording.keywords)
        raise ConfigError(f"no output folder: give --out=DIR or put 'out: DIR' in {where}")
    tasks = plan(spec, out_dir)
    if any(not runs.is_complete(task.run) for task in tasks):
        # before the output folder is made (a finished sweep reruns anywhere)
        check_cluster(spec, cluster, scheduler=scheduler)
        if scheduler is None and kind == "local":
            refuse_unguarded_main("a sweep on its own local cluster")
        elif scheduler is None:
            check_submit_command(kind)
    # One sweep writes an output folder at a time: two would each mark the other's runs
    # failed (busy) in the index they write last. It makes the folder, and removes it where
    # the sweep stopped before writing anything (a queue timeout, a SIGTERM while jobs wait).
    with sweep_lock(out_dir):
        outcomes = _sweep_in(
            out_dir, spec, tasks, scheduler, cluster, worker_timeout, progress, queue_timeout
        )
    summary = SweepSummary(out_dir, tasks, outcomes, time.perf_counter() - began)
    log.debug("%s", summary.text().splitlines()[0])  # the CLI prints the summary on stdout
    return summary


def _sweep_in(
    out_dir: Path,
    spec: SweepSpec,
    tasks: list[SweepTask],
    scheduler: str | None,
    cluster: str | None,
    worker_timeout: float | None,
    progress: bool,
    queue_timeout: float | None = None,
) -> dict[str, TaskOutcome]:
    """The sweep's work in ``out_dir`` (its lock held) on its planned ``tasks``: skip, train,
    write the index."""
    from distributed import as_completed

    from avda._io import progress_bar

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
    mismatched = sum(o.status == "failed" for o in outcomes.values())
    log.info(
        "sweep %s: %d runs, %d already complete, %d to train%s",
        spec.source,
        len(tasks),
        len(tasks) - len(pending) - mismatched,
        len(pending),
        f", {mismatched} finished with other settings (failed)" if mismatched else "",
    )
    if pending:
        connection = connect(
            spec,
            scheduler=scheduler,
            cluster=cluster,
            worker_timeout=worker_timeout,
            queue_timeout=queue_timeout,
            runs=len(pending),
        )
        with connection as (client, options):
            _write_index(out_dir, spec, tasks, outcomes)  # once a worker can train them
            link = dashboard_link(client)
            if link:
                log.info("Dask dashboard: %s", link)
            futures = {}
            busy_wait = busy_wait_seconds(spec)
            for task in pending:
                task = dataclasses.replace(
                    task, torch_threads=options["torch_threads"], busy_wait=busy_wait
                )
                future = client.submit(
                    run_task,
                    task,
                    key=f"avda-train-{task.name}",
                    retries=spec.retries,
                    pure=False,
                    resources=options["resources"],
                )
                futures[future] = task
            bar = progress_bar(total=len(futures), desc="sweep", unit="run", disable=not progress)
            watch = options["watch"]
            finished = as_completed(futures)
            try:
                while not finished.is_empty():
                    if not finished.has_ready():  # no worker left: Dask would wait forever
                        watch.check()
                        time.sleep(WATCH_SECONDS)
                        continue
                    future = next(finished)
                    task = futures[future]
                    outcome = _outcome(future, task)
                    future.release()  # else a worker lost later computes it again
                    outcomes[task.name] = outcome
                    if outcome.status == "failed":
                        log.warning("%s failed: %s", task.name, outcome.error)
                    bar.update(1)
                    bar.set_postfix(
                        failed=sum(o.status == "failed" for o in outcomes.values()), refresh=False
                    )
            except BaseException:
                # interrupted (Ctrl-C) or the cluster lost: the index says what is done, runs
                # finished on disk included (it said "pending" for every run of this sweep)
                for task in pending:
                    if task.name not in outcomes and runs.is_complete(task.run):
                        outcomes[task.name] = TaskOutcome(task.name, "complete")
                _write_index(out_dir, spec, tasks, outcomes)
                raise
            finally:
                bar.close()
                for future in futures:
                    future.release()
    _write_index(out_dir, spec, tasks, outcomes)
    _write_failures(out_dir, tasks, outcomes)
    _report_warnings(out_dir, tasks, outcomes)
    return outcomes


def _report_warnings(out: Path, tasks: list[SweepTask], outcomes: dict) -> None:
    """The runs' warnings (kept on the workers): all in ``OUT/sweep-warnings.log``; printed
    each with avda's logger at DEBUG (``avda -v``), else one line that says where they are."""
    path = out / WARNINGS
    lines = [
        f"{task.name}: {message}"
        for task in tasks
        if task.name in outcomes
        for message in outcomes[task.name].warnings
    ]
    # A run that did not train this time (complete before, or refused before it started)
    # keeps the warnings it had when it trained.
    trained = {
        name
        for name, o in outcomes.items()
        if o.status == "complete" or (o.status == "failed" and o.worker)
    }
    kept = {t.name for t in tasks} - trained
    earlier = path.read_text().splitlines() if path.is_file() else []
    previous = [line for line in earlier if line.split(": ", 1)[0] in kept]
    if not lines and not previous:
        path.unlink(missing_ok=True)
        return
    atomic_write_text(path, "\n".join(previous + lines) + "\n")
    if not lines:  # nothing new to say about
        return
    if log.isEnabledFor(logging.DEBUG):
        for line in lines:
            log.warning("%s", line)
        return
    count = len({line.split(": ", 1)[0] for line in lines})
    log.warning(
        "%d warning(s) from %d run(s), e.g. %s; all are in %s (%s prints them)",
        *(len(lines), count, lines[0], path, VERBOSE),
    )


RESULT_SECONDS = 60
"""Longest wait for a finished run's outcome: it lives on the worker that ran it, and a worker
lost after the run finished (its job cancelled, past its walltime) never sends it."""


def _outcome(future: Any, task: SweepTask) -> TaskOutcome:
    error = None
    if future.status == "finished":
        try:
            return future.result(timeout=RESULT_SECONDS)
        except TimeoutError:  # its worker is gone: the run folder says whether it finished
            log.debug("%s: no outcome from its worker in %d s", task.name, RESULT_SECONDS)
    elif future.status == "error":
        error = future.exception()
    if error is None:  # cancelled or lost: the scheduler went away (a killed scheduler)
        if runs.is_complete(task.run):  # its worker finished it before it heard
            metrics = {}
            with contextlib.suppress(AvdaError, OSError, ValueError):
                metrics = dict(json.loads((task.run / runs.STATUS).read_text())["metrics"])
            return TaskOutcome(task.name, "complete", metrics=metrics)
        return TaskOutcome(
            task.name,
            "failed",
            error=f"the Dask scheduler lost this run ({future.status}): run the same command "
            "again to finish it (its epochs so far are kept)",
        )
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


__all__ = [
    "CLUSTER_KINDS",
    "INDEX",
    "WARNINGS",
    "ClusterSpec",
    "HeadSpec",
    "SweepSpec",
    "SweepSummary",
    "SweepTask",
    "TaskOutcome",
    "check_cluster",
    "describe_spec",
    "task_problems",
    "job_script",
    "load_spec",
    "parse_spec",
    "plan",
    "run_serial",
    "run_sweep",
    "run_task",
]
