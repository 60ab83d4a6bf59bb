"""Many run directories -> one paper-style table: methods x domain settings, mean ± std over seeds.

Layouts (what the papers print):

* ``settings`` -- MM-SADA / RNA-Net / CharadesEgo: one column per setting (``D1→D2`` ...
  ``D3→D2``) and a ``Mean`` column; a cell is the mean ± std over seeds of one metric (top-1 of
  the first task, or mAP for multi-label tasks) on the target evaluation set;
* ``epic100`` -- EPIC-100 UDA: verb, noun and action top-1 and top-5 (the official scorer,
  :func:`avda.scoring.protocols.epic100_accuracies`).

Numbers are recomputed from each run's stored predictions, never read from its logs. ``Mean``
is, per seed, the average over the settings, then mean ± std over the seeds that have every
setting. Std is the sample std (``ddof=1``): one seed gives a mean only.

A run's *method* (its row) is the label a sweep gave it (``OUT/sweep.json``), else its
protocol role, else its head name; unlabelled runs whose configs differ from others of that
name are told apart by the fields that differ (not those a schedule derives from a setting's
data size, nor those a protocol sets by setting). Two runs of one method, setting and seed are
refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from avda import protocols as protocols_lib
from avda import runs, wording
from avda.data_manifests.settings import NAMED_SETTINGS
from avda.errors import ConfigError, RunError
from avda.scoring.metrics import (
    MAP_CONVENTIONS,
    mean_class_accuracy,
    mean_std,
    multilabel_map,
    task_ties,
    top1_accuracy,
    top_k_accuracy,
)
from avda.scoring.protocols import epic100_accuracies

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "settings", "epic100")
METRICS = ("top1", "top5", "mca", "mAP")
MEAN = "Mean"
SWEEP_INDEX = "sweep.json"  # the same name avda.sweep.run writes
SWEEP_FAILURES = "sweep-failures.csv"  # avda.sweep.run.FAILURES
EPIC100_COLUMNS = (
    ("verb", 1),
    ("verb", 5),
    ("noun", 1),
    ("noun", 5),
    ("action", 1),
    ("action", 5),
)
_SETTING_ORDER = {
    (setting.source_domains, setting.target_domains): position
    for position, setting in enumerate(NAMED_SETTINGS.values())
}


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the table needs to know about one run directory."""

    path: Path
    method: str
    head: str
    setting: str
    source: tuple[str, ...]
    target: tuple[str, ...]
    seed: int
    tasks: tuple[dict[str, Any], ...]
    head_config: dict[str, Any]
    protocol: str | None = None  # the named protocol it was trained under (avda.protocols)


def setting_label(source: Sequence[str], target: Sequence[str]) -> str:
    """``D1→D2``, ``D1,D2→D3``: the column header of a setting."""
    return f"{','.join(source)}→{','.join(target)}"


class FoundRuns(list):
    """The run folders :func:`find_runs` found (a list of paths), with ``left_out``: each run
    it left out and why (a table says how many in a footnote)."""

    left_out: list[str]


def find_runs(
    paths: Iterable[str | Path], *, complete_only: bool | Literal["below"] = True
) -> FoundRuns:
    """Run directories among ``paths``: a run folder itself, or every run below a folder.

    Runs below a sweep's output folder come in the sweep's order. Incomplete runs are left out
    (with a warning) when ``complete_only`` (``"below"``: those found below a folder, a run
    named itself is kept for the caller to refuse by name; a folder with one run still
    training was a refusal of the whole table), and so are runs their sweep's index (``sweep.json``
    in one of their folders above) marks failed: such a folder may hold a finished run of an
    earlier spec. A path holding no run is an error.
    """
    found = FoundRuns()
    found.left_out = []
    seen: set[Path] = set()  # resolved: runs/x and /abs/runs/x are one run
    failed = 0
    entries: dict[Path, dict[str, dict[str, Any]]] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise RunError(
                f"{path} does not exist; pass run folders, or the folder of a sweep's runs"
            )
        named = (path / runs.CONFIG).exists()
        if named:
            candidates = [path]
        else:
            candidates = _sweep_order(path)
            if candidates is None:
                candidates = _runs_below(path)
            failed_here = False  # this path's: another path's failed runs are not its own
            listed = _listed_without_a_folder(path)
            if not candidates and listed and all(s == "pending" for _, _, s in listed):
                raise RunError(_no_run_yet(path, listed))  # one line, not one warning a run
            for run, folder, status in listed:  # counted here
                failed_here = failed_here or status == "failed"
                if run.resolve() in seen:
                    continue
                seen.add(run.resolve())
                if status == "failed":
                    log.warning(
                        "%s failed in its sweep before it wrote its folder: left out (its "
                        "error: %s)",
                        *(run, folder / SWEEP_FAILURES),
                    )
                    failed += 1
                    found.left_out.append(f"{run} (failed in its sweep)")
                else:  # an interrupted sweep's run not started: its method may be all gone
                    log.warning(
                        "%s is not trained yet (%s in its sweep %s): left out; run the "
                        "sweep again to train it",
                        *(run, status, folder / SWEEP_INDEX),
                    )
                    found.left_out.append(f"{run} (not trained yet)")
            if not candidates and not failed_here:
                raise RunError(f"{path} holds no avda run (no {runs.CONFIG} below it)")
        for run in candidates:
            if run.resolve() in seen:
                continue
            seen.add(run.resolve())
            entry, folder = _index_entry(run, entries)
            if entry is not None and entry.get("status") == "failed":
                log.warning(
                    "%s failed in its sweep: left out (its error: %s; rerun the sweep once it "
                    "is fixed)",
                    *(run, folder / SWEEP_FAILURES),
                )
                failed += 1
                found.left_out.append(f"{run} (failed in its sweep)")
                continue
            keep_named = complete_only == "below" and named
            if complete_only and not keep_named and not runs.is_complete(run):
                log.warning("%s is not complete: left out", run)
                found.left_out.append(f"{run} (not complete)")
                continue
            found.append(run)
    if not found:
        why = f" ({failed} failed in their sweep)" if failed else ""
        raise RunError(
            f"none of the given runs is complete{why}; finish them with `avda train` (a "
            "sweep's: rerun the sweep)"
        )
    return found


def _sweep_order(folder: Path) -> list[Path] | None:
    """The runs of the sweep whose output ``folder`` is, in its order (None: not a sweep's
    folder, or its index lists no run folder that exists)."""
    index = folder / SWEEP_INDEX
    if not index.exists():
        return None
    entries = _index_runs(index)
    if entries is None:
        log.warning("%s is not a readable sweep index: the runs below it in path order", index)
        return None
    order = [folder / e["run"] for e in entries if (folder / e["run"] / runs.CONFIG).exists()]
    return order or None


def _index_runs(index: Path) -> list[dict[str, Any]] | None:
    """The run entries of the sweep index ``index`` (``sweep.json``), each with its ``run``
    folder; None where it cannot be read as one (the callers say what they do instead)."""
    try:
        entries = list(json.loads(index.read_text()).get("runs", []))
        if all(isinstance(e, dict) and isinstance(e.get("run"), str) for e in entries):
            return entries
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        pass
    return None


def _listed_without_a_folder(folder: Path) -> list[tuple[Path, Path, str]]:
    """(run, its sweep folder, status) for each run that a sweep index at or below ``folder``
    lists as not done and that has no run folder: ``failed`` (a config the head refused fails
    before it writes one) or ``pending`` (a sweep interrupted, SIGTERM or Ctrl-C, before the
    run started; a SIGKILL leaves every run pending in the index, and those done have their
    folders): a table without them would lose a whole method without a word."""
    listed = []
    for index in sorted(folder.rglob(SWEEP_INDEX)):
        for entry in _index_runs(index) or []:  # _sweep_order and _index_entry warn of one
            run = index.parent / entry["run"]
            status = str(entry.get("status"))
            if status in ("failed", "pending") and not (run / runs.CONFIG).exists():
                listed.append((run, index.parent, status))
    return listed


def _no_run_yet(path: Path, listed: list[tuple[Path, Path, str]]) -> str:
    """The refusal of ``path`` whose sweeps (``listed``: :func:`_listed_without_a_folder`,
    all pending) were stopped before any of their runs made its folder."""
    sweeps = sorted({folder for _, folder, _ in listed})
    again = []
    for folder in sweeps:
        try:
            spec = json.loads((folder / SWEEP_INDEX).read_text()).get("spec")
        except (OSError, ValueError, AttributeError):
            spec = None
        named = isinstance(spec, str) and spec not in ("spec", "<spec>")  # not a Python dict
        again.append(f"avda sweep {spec} --out {folder}" if named else f"its spec, out {folder}")
    return (
        f"{path}: {'its sweep has' if len(sweeps) == 1 else 'its sweeps have'} no finished run "
        f"yet ({len(listed)} pending, none started): run the same sweep again to train them "
        f"({'; '.join(again)}), then evaluate"
    )


def _runs_below(folder: Path) -> list[Path]:
    """The runs below ``folder``, which is not a sweep's: those of each sweep folder below it
    in that sweep's order (a folder holding several sweeps' outputs keeps each table's row
    order, Source-only first, not the path order that put "DANN" before it), then the others
    in the order of their methods in their protocol's table (:func:`_table_position`), and in
    path order (runs without a protocol's role, and a method's runs)."""
    found = sorted(p.parent for p in folder.rglob(runs.CONFIG))
    below = set(found)
    ordered: list[Path] = []
    for index in sorted(folder.rglob(SWEEP_INDEX)):
        for run in _sweep_order(index.parent) or []:
            if run in below and run not in ordered:
                ordered.append(run)
    taken = set(ordered)
    return ordered + sorted((run for run in found if run not in taken), key=_table_position)


def _table_position(run: Path) -> float:
    """The place of ``run``'s method (its ``protocol_role``) in the table of the protocol it
    was trained under (``mmsada-epic55``: source-only, adabn, mmd, mm-sada, ...); after those a
    run without one (no protocol, a protocol of every head, or a config that cannot be read:
    its error comes when the table reads it). Runs of ``avda train --protocol`` in one folder
    came out in path order, "adabn" before "source-only"."""
    try:
        config = runs.read_config(run)
    except RunError:
        return math.inf
    protocol = protocols_lib.PROTOCOLS.get(str(config.get("protocol")))
    methods = list(protocol.heads) if protocol is not None else []
    role = config.get("protocol_role")
    return methods.index(role) if role in methods else math.inf


def _index_entry(
    run: Path, cache: dict[Path, dict[str, dict[str, Any]]]
) -> tuple[dict[str, Any] | None, Path | None]:
    """The entry of ``run`` in a sweep index in one of its folders above, and that folder."""
    resolved = run.resolve()
    for folder in list(resolved.parents)[:6]:
        if folder not in cache:
            index = folder / SWEEP_INDEX
            found: dict[str, dict[str, Any]] = {}
            entries = _index_runs(index) if index.exists() else []
            if entries is None:
                log.warning("%s is not a readable sweep index: ignored", index)
            for entry in entries or []:
                found[str((folder / entry["run"]).resolve())] = entry
            cache[folder] = found
        if str(resolved) in cache[folder]:
            return cache[folder][str(resolved)], folder
    return None, None


def _index_labels(run: Path, cache: dict[Path, dict[str, dict[str, Any]]]) -> str | None:
    """The method label a sweep index in one of ``run``'s ancestors gives it."""
    entry, _ = _index_entry(run, cache)
    method = entry.get("method") if entry is not None else None
    return str(method) if method is not None else None


def describe_runs(run_dirs: Sequence[str | Path]) -> list[RunInfo]:
    """Method, setting and seed of each run (methods labelled as the module docstring says)."""
    configs = [(Path(run), runs.read_config(run)) for run in run_dirs]
    index_cache: dict[Path, dict[str, dict[str, Any]]] = {}
    labels = {run: _index_labels(run, index_cache) for run, _ in configs}
    # A run is named by its sweep's label, else its protocol role, else its head; a run
    # without a sweep's label also by the head-config fields in which the runs of its name
    # (labelled ones too) differ: within a setting, any field; between settings, any field
    # but those a schedule derives from a setting's data size (epochs, eval_every, stage
    # lengths) and those the protocol sets by setting (ta3n-ucf-hmdb's H->U beta). Runs of
    # another protocol make another table: compared within their own.
    base = {
        run: labels[run] or config.get("protocol_role") or config["head"] for run, config in configs
    }
    # A setting where one method has runs on several caches (other features, another
    # dataset) is one column per cache: their numbers are not seeds of one experiment. Where
    # each method reads one cache (a sweep's `caches:` labels its rows `label (cache)`), the
    # rows already tell them apart: one column.
    caches: dict[str, dict[str, set[str]]] = {}
    for run, config in configs:
        methods = caches.setdefault(_setting_of(config), {})
        methods.setdefault(base[run], set()).add(str(config.get("cache", "")))
    split = {s for s, methods in caches.items() if any(len(c) > 1 for c in methods.values())}
    names = _cache_names({c for s in split for group in caches[s].values() for c in group})
    settings = {}
    for run, config in configs:
        setting = _setting_of(config)
        if setting in split:
            setting = f"{setting} ({names[str(config.get('cache', ''))]})"
        settings[run] = setting
    by_setting: dict[tuple[Any, str, str], list[dict[str, Any]]] = {}
    across: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for run, config in configs:
        key = (config.get("protocol"), base[run], settings[run])
        by_setting.setdefault(key, []).append(config.get("head_config", {}))
        across.setdefault(key[:2], []).append(_protocol_setting_marked(config))
    differing: dict[tuple[Any, str], set[str]] = {}
    for (protocol, name, _), group in by_setting.items():
        differing.setdefault((protocol, name), set()).update(_differing_fields(group))
    for (protocol, name), group in across.items():
        kept = {k for k in _differing_fields(group) if not _is_derived(k)}
        differing[(protocol, name)].update(kept)
    infos = []
    for run, config in configs:
        setting = settings[run]
        keys = differing.get((config.get("protocol"), base[run]), set())
        method = labels[run] or _labelled(base[run], config, keys)
        infos.append(
            RunInfo(
                path=run,
                method=method,
                head=config["head"],
                setting=setting,
                source=tuple(config["source"]),
                target=tuple(config["target"]),
                seed=int(config["seed"]),
                tasks=tuple(config.get("tasks", [])),
                head_config=config.get("head_config", {}),
                protocol=config.get("protocol"),
            )
        )
    return infos


def _setting_of(config: dict[str, Any]) -> str:
    return setting_label(config["source"], config["target"])


def _cache_names(paths: set[str]) -> dict[str, str]:
    """A short name per cache path: its file name, or the whole path where names collide."""
    stems = {p: Path(p).name.removesuffix(".zarr") or p for p in paths}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {p: stem if counts[stem] == 1 else p for p, stem in stems.items()}


def _is_derived(field: str) -> bool:
    """Whether the default steps schedule derives ``field`` from the data size: the length,
    the evaluation interval, the lr steps and the stage lengths (every head's ``stage_fields``
    are ``lr_steps`` or ``*_epochs``; tests/evaluate checks it)."""
    return field in {"epochs", "eval_every", "schedule", "lr_steps"} or field.endswith("_epochs")


_BY_SETTING = "<the protocol's value for the run's setting>"


def _protocol_setting_marked(config: dict[str, Any]) -> dict[str, Any]:
    """``config``'s head config with each field its protocol sets by setting (TA3N's U->H /
    H->U beta, gamma and target batch under ``ta3n-ucf-hmdb``) replaced by one mark where it
    holds the protocol's value for the run's setting: between settings those differ by the
    protocol's design, not the user's; a value the user set (--set beta=...) stays itself."""
    head_config = config.get("head_config", {})
    protocol = protocols_lib.PROTOCOLS.get(str(config.get("protocol")))
    role = config.get("protocol_role")
    if protocol is None or role is None:
        return head_config
    fields = {f for methods in protocol.per_setting.values() for f in methods.get(role, {})}
    if not fields:
        return head_config
    try:
        _, values = protocol.resolve(role, None, config.get("source"), config.get("target"))
    except (ConfigError, KeyError):  # a method or setting this avda's protocol does not know
        return head_config
    marked = dict(head_config)
    for field in fields & values.keys():
        if _plain(head_config.get(field)) == _plain(values[field]):
            marked[field] = _BY_SETTING
    return marked


def _plain(value: Any) -> Any:
    """``value`` as its YAML record reads back (a tuple as a list)."""
    return json.loads(json.dumps(value, default=str))


def _differing_fields(group: list[dict[str, Any]]) -> set[str]:
    """The head-config fields whose values are not the same in every config of ``group``."""
    return {k for c in group for k in c if any(c.get(k) != o.get(k) for o in group)}


def _labelled(name: str, config: dict[str, Any], keys: set[str]) -> str:
    """``name``, with the run's values of ``keys``: ``dann (lr=0.1)``."""
    if not keys:
        return name
    own = config.get("head_config", {})
    return f"{name} ({', '.join(f'{k}={own.get(k)}' for k in sorted(keys))})"


@dataclasses.dataclass
class AggregateTable:
    """Rows = methods, columns = settings (or metrics); per cell the per-seed values in %."""

    title: str
    methods: list[str]
    columns: list[str]
    values: dict[tuple[str, str], list[float]]
    seeds: dict[tuple[str, str], list[int]]
    higher_is_better: bool = True
    protocol: str | None = None  # the protocol whose evaluation rule every row follows
    notes: list[str] = dataclasses.field(default_factory=list)  # footnotes (runs left out...)
    published: set[str] = dataclasses.field(default_factory=set)  # rows of published numbers
    sets: list[str] = dataclasses.field(default_factory=list)  # the sets its runs were scored on

    def cell(self, method: str, column: str) -> tuple[float, float, int]:
        """Mean, std (NaN for one seed) and number of seeds; NaNs when the cell is empty.

        ``column`` may name a setting as specs and run folders do (``D1->D2``, ``D1-D2``,
        ``source-target``) for its header ``D1→D2``; a method or column the table does not have
        is a :class:`ConfigError` naming the ones it has (not an empty cell)."""
        if method not in self.methods:
            raise ConfigError(
                f"{method!r} is not a method of this table; methods: {', '.join(self.methods)}"
            )
        column = self._column(column)
        values = [v for v in self.values.get((method, column), []) if not math.isnan(v)]
        if not values:
            return float("nan"), float("nan"), 0
        mean, std = mean_std(values)
        return mean, std, len(values)

    def _column(self, name: str) -> str:
        if name in self.columns:
            return name
        first, space, rest = name.partition(" ")
        for arrow in ("->", "-"):
            if arrow in first and first.count(arrow) == 1:
                source, target = first.split(arrow)
                label = f"{source}→{target}{space}{rest}"
                if label in self.columns:
                    return label
        named = _column_of_setting(name)
        if named in self.columns:
            return named
        raise ConfigError(
            f"{name!r} is not a column of this table; columns: {', '.join(self.columns)}"
        )

    def to_frame(self, *, long: bool = False) -> pd.DataFrame:
        """The table as a DataFrame: one row per method, each column's ``mean``, ``std`` and
        number of ``seeds`` (columns ``(column, statistic)``); ``long=True``: one row per value,
        ``method, column, seed, value`` (seed -1 for a published number), for plotting or
        statistics of your own."""
        import pandas as pd

        if long:
            rows = [
                (method, column, seed, value)
                for method in self.methods
                for column in self.columns
                for seed, value in zip(
                    self.seeds.get((method, column), []),
                    self.values.get((method, column), []),
                    strict=True,
                )
            ]
            return pd.DataFrame(rows, columns=["method", "column", "seed", "value"])
        cells = {
            (column, statistic): [self.cell(m, column)[i] for m in self.methods]
            for column in self.columns
            for i, statistic in enumerate(("mean", "std", "seeds"))
        }
        frame = pd.DataFrame(cells, index=pd.Index(self.methods, name="method"))
        frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["column", "statistic"])
        return frame

    def best(self, column: str) -> set[str]:
        """Methods with the best mean in ``column`` (ties: all of them)."""
        means = {m: self.cell(m, column)[0] for m in self.methods if m not in self.published}
        means = {m: v for m, v in means.items() if not math.isnan(v)}
        if not means:
            return set()
        target = max(means.values()) if self.higher_is_better else min(means.values())
        return {m for m, v in means.items() if round(v, 6) == round(target, 6)}

    def gains(self, baseline: str) -> dict[tuple[str, str], float]:
        """Each method's mean minus the baseline's mean, per column (percentage points).

        Where both cells are seeds of runs but not the same seeds (a seed failed or was left
        out on one side), the gain is paired: the mean difference over the seeds both have, so
        that a hard seed missing on one side does not count as a gain (:meth:`paired` tells
        those cells). Published rows and cells with no seed in common compare their means."""
        if baseline not in self.methods:
            raise ConfigError(
                f"--compare {baseline!r} is not a method of this table; methods: "
                + ", ".join(self.methods)
            )
        gains = {}
        for column in self.columns:
            reference = self.cell(baseline, column)[0]
            ours = self._by_seed(baseline, column)
            for method in self.methods:
                if self.paired(method, baseline, column) is None:
                    gains[(method, column)] = self.cell(method, column)[0] - reference
                    continue
                theirs = self._by_seed(method, column)
                common = set(ours) & set(theirs)
                gains[(method, column)] = float(np.mean([theirs[s] - ours[s] for s in common]))
        return gains

    def paired(self, method: str, baseline: str, column: str) -> int | None:
        """The number of seeds a paired gain of ``method`` over ``baseline`` in ``column`` is
        over, where :meth:`gains` pairs them (the two cells have different seeds, some in
        common); None where it compares the two means."""
        ours, theirs = self._by_seed(baseline, column), self._by_seed(method, column)
        common = set(ours) & set(theirs)
        return len(common) if common and set(ours) != set(theirs) else None

    def _by_seed(self, method: str, column: str) -> dict[int, float]:
        """The finite values of a cell by seed; empty for a published row (seed -1)."""
        key = (method, column)
        pairs = zip(self.seeds.get(key, []), self.values.get(key, []), strict=True)
        return {seed: value for seed, value in pairs if seed >= 0 and not math.isnan(value)}


def choose_set(run: Path, eval_set: str) -> str:
    available = runs.prediction_sets(run)
    if eval_set != "auto":
        if eval_set not in available:
            raise RunError(
                f"{run} has no predictions for {eval_set!r} (it has {', '.join(available)}); "
                "choose another --set"
            )
        return eval_set
    found = [name for name in ("target_test", "target_val") if name in available]
    if not found:
        raise RunError(f"{run} has no target predictions (it has {', '.join(available) or 'none'})")
    for name in found:  # EPIC-100's target_test has no labels: its target_val is scored
        if _has_labels(runs.read_predictions(run, name)["labels"]):
            return name
    return found[0]


def warn_mixed_sets(scored: dict[Path, str], notes: list[str]) -> None:
    """Where ``scored`` (run -> the set it was scored on) holds more than one set (``--set
    auto`` takes target_test where it is labelled, else target_val), a warning naming each set
    and its runs, also added to ``notes``: a cell or a mean of them mixes the sets."""
    by_set: dict[str, list[Path]] = {}
    for run, split in scored.items():
        by_set.setdefault(split, []).append(run)
    if len(by_set) < 2:
        return
    parts = []
    for split in sorted(by_set):
        found = by_set[split]
        more = f" and {len(found) - 2} more" if len(found) > 2 else ""
        parts.append(f"{split}: {', '.join(map(str, found[:2]))}{more}")
    note = (
        f"the runs were scored on different sets ({'; '.join(parts)}), which this table "
        "averages together; score one set for all with --set (avda evaluate), or pass the "
        "runs of one set"  # --set outside a command: the Python API says its eval_set
    )
    log.warning("%s", note)
    notes.append(note)


def _has_labels(labels: dict[str, np.ndarray]) -> bool:
    """Whether any segment has a label (single-label ids >= 0, multi-label a positive)."""
    return any(
        bool((values >= 0).any()) if values.ndim == 1 else bool((values > 0).any())
        for values in labels.values()
    )


def _metric_value(
    scores: np.ndarray,
    labels: np.ndarray,
    metric: str,
    groups: np.ndarray | None = None,
    ties: str = "lowest",
) -> float:
    """``metric`` of one predictions file; an mAP over its ``groups`` (``score_group``: the
    maximum over each group's rows) where it records them. ``ties``: the task's tie rule
    (:func:`avda.scoring.metrics.task_ties`)."""
    if metric in MAP_CONVENTIONS:
        return multilabel_map(scores, labels, groups, metric)
    known = labels >= 0
    if not known.any():
        return float("nan")
    scores, labels = scores[known], labels[known]
    if metric == "top1":
        return top1_accuracy(scores, labels, ties)
    if metric == "top5":
        return top_k_accuracy(scores, labels, 5, ties)
    return mean_class_accuracy(scores, labels, ties)


def _single_label(info: RunInfo) -> set[str]:
    return {t["name"] for t in info.tasks if not t.get("multi_label")}


def aggregate(
    run_dirs: Sequence[str | Path],
    *,
    layout: str = "auto",
    eval_set: str = "auto",
    task: str | None = None,
    metric: str | None = None,
    protocol: str | None = None,
) -> AggregateTable:
    """The paper-style table of ``run_dirs`` (complete runs; see :func:`find_runs`).

    Every row follows the evaluation rule of one protocol (``protocol``, else the first run's;
    :mod:`avda.protocols`): runs trained under another are left out with a note. Rows of the
    papers' numbers come from the sweep index (``published:`` of the spec)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if metric is not None and metric not in METRICS + ("mAP-present", "mAP-authors"):
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    infos = describe_runs(run_dirs)
    if not infos:
        raise RunError("no runs to aggregate")
    infos, chosen, notes = _same_protocol(infos, protocol)
    _one_run_per_seed(infos)
    rule = protocols_lib.rule_for(chosen)
    both = [info for info in infos if {"verb", "noun"} <= _single_label(info)]
    others = [info for info in infos if info not in both]
    if layout == "auto":
        layout = "epic100" if not others or rule.layout == "epic100" else "settings"
        if both and others and layout == "settings":
            notes.append(
                f"settings layout: {len(others)} run(s) predict no verb and noun (e.g. "
                f"{others[0].path}); --layout epic100 scores the others' verb, noun and action"
            )
    if layout == "epic100":
        if both and others:  # one verb-only run (audio-adaptive) refused the whole table
            notes.append(
                f"Left out: {len(others)} run(s) without verb and noun tasks (e.g. "
                f"{others[0].path}), which the epic100 layout scores"
            )
            infos = both
        table = _epic100_table(infos, eval_set, rule)
    else:
        table = _settings_table(infos, eval_set, task, metric, rule)
    table.protocol = chosen
    shown = metric if layout == "settings" else None  # the epic100 layout has its own columns
    table.title = f"{protocols_lib.describe(chosen, shown)}; {table.title}"
    table.notes.extend(notes)
    left_out = getattr(run_dirs, "left_out", [])
    if left_out:
        more = f" and {len(left_out) - 2} more" if len(left_out) > 2 else ""
        table.notes.append(
            f"{len(left_out)} run(s) found but left out: {'; '.join(left_out[:2])}{more}."
        )
    if _published_entries(infos):  # asked only then: it reads each run's predictions
        changed = _not_the_papers_numbers(infos, layout, eval_set, task, metric, rule)
        if changed:
            table.notes.append(
                f"[published] rows left out: the papers' numbers are the protocol's table, "
                f"which {changed} changes (run without it to compare)"
            )
        else:
            _add_published(table, infos, _one_of_the_rules(shown, rule))
    table.notes = [wording.spelt(note) for note in table.notes]  # avda.evaluate: its keywords
    return table


def _not_the_papers_numbers(
    infos: Sequence[RunInfo],
    layout: str,
    eval_set: str,
    task: str | None,
    metric: str | None,
    rule: protocols_lib.EvaluationRule,
) -> str | None:
    """The option (``--metric top5``) by which a table shows other numbers than a spec's
    ``published:`` rows, which are the protocol's table (its metric, each run's first task,
    the set ``--set auto`` scores); None where it shows those. A paper's top-1 under a top-5
    or source_test column read as ours against theirs."""
    if eval_set != "auto" and any(_auto_set(i.path) != eval_set for i in infos):
        return f"--set {eval_set}"
    if layout != "settings":
        return None  # the epic100 layout's columns name their task and metric
    if task is not None and any(run_task(i, None)[0] != task for i in infos):
        return f"--task {task}"
    if metric is not None and metric != rule.metrics[0]:
        if not (rule.metrics[0] == "auto" and metric in ("top1", "mAP")):  # auto resolves
            if _one_of_the_rules(metric, rule) is None:  # one of several: the paper's too
                return f"--metric {metric}"
    return None


def _one_of_the_rules(metric: str | None, rule: protocols_lib.EvaluationRule) -> str | None:
    """The metric of ``rule``'s several (``mAP-present``, ``mAP-authors``) that a table of
    ``--metric metric`` shows alone (``mAP`` is ``mAP-present``); None for a rule of one
    metric, or another metric."""
    if metric is None or len(rule.metrics) < 2:
        return None
    for name in (metric, "mAP-present" if metric == "mAP" else None):
        if name in rule.metrics:
            return name
    return None


def _auto_set(run: Path) -> str | None:
    """The set ``--set auto`` scores of ``run``; None where it has no target predictions (a
    run scored with ``--set source_test`` only: the papers' set is not there)."""
    try:
        return choose_set(run, "auto")
    except RunError:
        return None


def _one_run_per_seed(infos: Sequence[RunInfo]) -> None:
    """Refuse two runs of one method, setting and seed: a cell would count one seed twice
    (a copied run folder, or runs of another config under one name)."""
    first: dict[tuple[str, str, int], Path] = {}
    for info in infos:
        key = (info.method, info.setting, info.seed)
        if key in first:
            raise RunError(
                f"{first[key]} and {info.path} are both seed {info.seed} of {info.method} on "
                f"{info.setting}: a table would count that seed twice; pass one of them, give "
                "their sweeps' methods other labels, or train the other with another --seed"
            )
        first[key] = info.path


def _same_protocol(
    infos: Sequence[RunInfo], protocol: str | None
) -> tuple[list[RunInfo], str | None, list[str]]:
    """The runs trained under ``protocol`` (default: the first run's), the protocol, and a
    note about each protocol whose runs were left out (their numbers follow another rule)."""
    if protocol is not None:
        protocols_lib.get(protocol)  # an unknown name lists the valid ones
    chosen = protocol if protocol is not None else infos[0].protocol
    kept = [i for i in infos if i.protocol == chosen]
    notes = []
    left: dict[str | None, list[RunInfo]] = {}
    for info in infos:
        if info.protocol != chosen:
            left.setdefault(info.protocol, []).append(info)
    for other, group in left.items():
        name = other or "none"
        note = (
            f"Left out: {len(group)} run(s) trained under protocol {name} (e.g. "
            f"{group[0].path}); their numbers follow another rule: make their table with "
            f"--protocol {name}"
            if other
            else f"Left out: {len(group)} run(s) trained "
            f"without a protocol (e.g. {group[0].path}); train them with --protocol "
            f"{chosen} to compare them here"
        )
        log.warning("%s", note)
        notes.append(note)
    if not kept:
        raise RunError(
            f"no run was trained under protocol {chosen}; the runs' protocols: "
            + ", ".join(sorted({i.protocol or "none" for i in infos}))
        )
    return kept, chosen, notes


def reduce_checkpoints(values: Sequence[float], rule: protocols_lib.EvaluationRule) -> float:
    """One cell from each checkpoint's score: their mean (``reduce="max"`` has kept one
    checkpoint already: :func:`best_checkpoint`)."""
    return float(np.mean(values))


def best_checkpoint(main: Sequence[float]) -> int:
    """The index of the checkpoint with the best main metric, the first on a tie (the
    authors' ``is_best = prec1 > best_prec1``); a NaN is never the best."""
    best = 0
    for index, value in enumerate(main):
        if value > main[best] or (np.isnan(main[best]) and not np.isnan(value)):
            best = index
    return best


def rule_predictions(
    run: Path, split: str, checkpoints: int, reduce: str = "mean"
) -> list[dict[str, Any]]:
    """The predictions a protocol's rule scores: the final ones (``checkpoints`` 1), or those
    of the last ``checkpoints`` evaluations (``RUN/epochs/<epoch>/predictions``)."""
    if checkpoints <= 1:
        return [runs.read_predictions(run, split)]
    folder = Path(run) / runs.EPOCHS
    epochs = [e for e in runs.epoch_folders(run) if split in runs.prediction_sets(e)]
    if len(epochs) < checkpoints:
        head_config = runs.read_config(run).get("head_config") or {}
        kept = int(head_config.get("keep_last_predictions") or 0)
        trained = int(head_config.get("epochs") or 0)
        every = max(int(head_config.get("eval_every") or 1), 1)
        evaluations = runs.evaluations(trained, every)
        if kept < checkpoints:
            why = f"it kept {kept} (keep_last_predictions)"
        elif evaluations < checkpoints:
            why = f"it was evaluated {evaluations} times ({trained} epochs, eval_every {every})"
        else:
            why = "the others are not in its folder"
        raise RunError(
            f"{run} has {split} predictions of {len(epochs)} checkpoint(s) under {folder}, its "
            f"protocol's table {'takes the best of' if reduce == 'max' else 'averages'} the "
            f"last {checkpoints} ({why}); train it again under "
            f"the protocol with at least {checkpoints} evaluations, or leave it out"
        )
    return [runs.read_predictions(e, split) for e in epochs[-checkpoints:]]


def run_task(info: Any, task: str | None) -> tuple[str, bool]:
    """The task a table scores in run ``info`` (``task``, default the run's first) and whether
    it is multi-label; a run without it is refused in one line naming the run."""
    tasks = {t["name"]: t for t in info.tasks}
    name = task or next(iter(tasks), None)
    if name not in tasks:
        raise RunError(
            f"{info.path} has no task {name!r} (it has {', '.join(tasks) or 'none'}); "
            "choose another --task"
        )
    return name, bool(tasks[name].get("multi_label"))


def scored_checkpoints(
    info: RunInfo,
    split: str,
    rule: protocols_lib.EvaluationRule,
    task: str | None = None,
    metric: str | None = None,
) -> list[dict[str, Any]]:
    """The predictions of ``info``'s run that ``rule`` scores on ``split``: its final ones, the
    last ``rule.checkpoints`` (each scored, the scores averaged), or with ``reduce="max"`` the
    one checkpoint of those with the best main metric, from which every column is scored: the
    metric the table shows, ``metric`` (default the rule's first) of ``task`` (default the
    run's first), or without ``metric`` EPIC-100's action top-1 under an epic100 rule for a
    run with verb and noun (whose table shows every task from one epoch)."""
    checkpoints = rule_predictions(info.path, split, rule.checkpoints, rule.reduce)
    if rule.reduce != "max":
        return checkpoints
    tasks = {t["name"]: t for t in info.tasks}
    epic100 = rule.layout == "epic100" and {"verb", "noun"} <= _single_label(info)
    if epic100 and metric is None:
        main = []
        for p in checkpoints:
            verb, noun = p["labels"]["verb"], p["labels"]["noun"]
            known = (verb >= 0) & (noun >= 0)
            accuracies = epic100_accuracies(
                p["scores"]["verb"][known], p["scores"]["noun"][known], verb[known], noun[known]
            )
            main.append(accuracies["all_action_accuracy_at_1"])
    else:
        main_task = task or next(iter(tasks))
        main_metric = metric or rule.metrics[0]
        if main_metric == "auto":
            main_metric = "mAP" if tasks[main_task].get("multi_label") else "top1"
        ties = task_ties(main_task, _single_label(info))
        main = [
            _metric_value(
                p["scores"][main_task], p["labels"][main_task], main_metric, p.get("groups"), ties
            )
            for p in checkpoints
        ]
    return [checkpoints[best_checkpoint(main)]]


def _add_published(
    table: AggregateTable, infos: Sequence[RunInfo], alone: str | None = None
) -> None:
    """Rows of the papers' numbers that the sweep specs of ``infos`` carry (``published:``).

    ``alone``: the one metric of the protocol's several that the table shows (``--metric
    mAP-authors``): a cell keyed ``SETTING mAP-authors`` is the column of SETTING, one of
    another of the protocol's metrics (``SETTING mAP-present``) is left out, with a note."""
    metrics = protocols_lib.rule_for(table.protocol).metrics if alone else ()
    for published in _published_entries(infos):
        rows = published.get("rows", {})
        added = False
        other_metric: dict[str, list[str]] = {}  # metric -> the rows whose cells of it are out
        measured = published.get("set")  # None: the set --set auto scores (the papers')
        elsewhere = measured is not None and table.sets != [measured]
        tag = f"[published, {measured}]" if elsewhere else "[published]"
        for row, cells in rows.items():
            label = f"{row} {tag}"
            if label in table.methods:
                continue
            others = False  # a setting of the paper's this table does not have
            for key, value in cells.items():
                key = str(key)
                setting, _, cell_metric = key.rpartition(" ")
                if cell_metric in metrics:
                    if cell_metric != alone:
                        if value is not None and str(row) not in other_metric.get(cell_metric, []):
                            other_metric.setdefault(cell_metric, []).append(str(row))
                        continue
                    key = setting
                column = _published_column(table, key)
                if column is None and value is not None and not str(key).startswith(MEAN):
                    others = True
                if column is None or value is None:
                    continue
                table.values.setdefault((label, column), []).append(float(value))
                table.seeds.setdefault((label, column), []).append(-1)
            _published_means(table, label, others=others)
            if any((label, c) in table.values for c in table.columns):
                table.methods.append(label)
                table.published.add(label)
                added = True
        if added and published.get("source"):  # not a source of rows the table does not show
            on = f" (measured on {measured})" if measured else ""
            table.notes.append(f"[published]: {published['source']}{on}")
        if added and elsewhere:
            mixed = measured in table.sets  # some of its runs scored on it (warned)
            table.notes.append(
                f"{tag} rows were measured on {measured}, "
                + ("on which this table scores only some of its runs" if mixed else
                   "which this table does not score")
                + f" (it scores {', '.join(table.sets)}): "
                + ("a reference for those, not a comparison with the others" if mixed else
                   "other segments, a reference and not a comparison")
            )  # fmt: skip
        for metric, labels in other_metric.items():
            table.notes.append(
                f"[published] {metric} numbers left out ({', '.join(labels)}): this table shows "
                f"{alone} alone, of the protocol's {', '.join(metrics)} (without --metric, a "
                "column of each)"
            )


def _published_column(table: AggregateTable, key: str) -> str | None:
    """The table's column of a published cell's key, spelt as a spec's settings are
    (``D1-D2``, ``D1->D2``, ``source->target``, a named setting, ``Mean``); None where the
    table has no such column. Only named settings were mapped: a spec whose settings are
    ``["source->target"]`` had its published rows dropped (the footnote still cited them)."""
    try:
        return table._column(key)
    except ConfigError:
        return None


def _published_means(table: AggregateTable, label: str, *, others: bool) -> None:
    """A published row's ``Mean`` cells made comparable with the table's, which average the
    table's settings: the paper's mean is kept where the row has exactly those settings; it is
    the mean of the row's cells where the paper has more settings or prints no mean; left out
    where the row lacks one of the table's settings. A row that is only a mean is kept as is."""
    means = [c for c in table.columns if c == MEAN or c.startswith(f"{MEAN} ")]
    settings = [c for c in table.columns if c not in means]
    if not any((label, c) in table.values for c in settings):
        return  # the paper prints only its mean: nothing to check it against
    for mean in means:
        suffix = mean[len(MEAN) :]
        group = [c for c in settings if c.endswith(suffix)] if suffix else settings
        given = (label, mean) in table.values
        if not all((label, c) in table.values for c in group):
            if given:
                del table.values[(label, mean)], table.seeds[(label, mean)]
                _note(
                    table,
                    f"[published] {mean}: left out where the paper's row lacks one of this "
                    "table's settings (it averages others)",
                )
            continue
        if given and not others:
            continue
        table.values[(label, mean)] = [float(np.mean([table.values[(label, c)][0] for c in group]))]
        table.seeds[(label, mean)] = [-1]
        _note(
            table,
            f"[published] {mean}: the mean of the row's cells where the paper averages settings "
            "this table does not have, or prints no mean",
        )


def _note(table: AggregateTable, note: str) -> None:
    if note not in table.notes:
        table.notes.append(note)


def _column_of_setting(name: str) -> str:
    """A published cell's key -> the table's column: ``D2-D1`` -> ``D2→D1``, ``charades-ego
    mAP-authors`` -> ``third→first mAP-authors`` (named settings become their column label;
    other keys, ``Mean``, ``verb top-1``, stay as they are)."""
    first, _, rest = name.partition(" ")
    setting = NAMED_SETTINGS.get(first)
    if setting is None:
        return name
    label = setting_label(setting.source_domains, setting.target_domains)
    return f"{label} {rest}" if rest else label


def _published_entries(infos: Sequence[RunInfo]) -> list[dict[str, Any]]:
    found: dict[Path, dict[str, Any]] = {}
    for info in infos:
        for folder in list(info.path.resolve().parents)[:6]:
            index = folder / SWEEP_INDEX
            if folder in found or not index.exists():
                continue
            try:
                published = json.loads(index.read_text()).get("published")
            except (json.JSONDecodeError, AttributeError):
                published = None
            found[folder] = published if isinstance(published, dict) else {}
    return [p for p in found.values() if p]


def _settings_order(infos: Sequence[RunInfo]) -> list[str]:
    first_seen = {}
    for position, info in enumerate(infos):
        key = _SETTING_ORDER.get((info.source, info.target), len(_SETTING_ORDER) + position)
        first_seen.setdefault(info.setting, key)
    return sorted(first_seen, key=first_seen.get)


def _methods_order(infos: Sequence[RunInfo]) -> list[str]:
    return list(dict.fromkeys(i.method for i in infos))


def _add(table: AggregateTable, info: RunInfo, column: str, value: float) -> None:
    key = (info.method, column)
    if info.seed in table.seeds.setdefault(key, []):
        log.warning("%s: a second run of %s / %s / seed %d", info.path, *key, info.seed)
    table.seeds[key].append(info.seed)
    table.values.setdefault(key, []).append(100.0 * value)


def _settings_table(
    infos: Sequence[RunInfo],
    eval_set: str,
    task: str | None,
    metric: str | None,
    rule: protocols_lib.EvaluationRule,
) -> AggregateTable:
    settings = _settings_order(infos)
    wanted = [metric] if metric else list(rule.metrics)
    several = len(wanted) > 1
    names_used: dict[str, None] = {}  # in the columns' order
    scored: dict[str, set[str]] = {}  # column -> the "task metric" its cells are
    sets_used: dict[Path, str] = {}
    columns = [f"{s} {m}" if several else s for m in wanted for s in settings]
    table = AggregateTable("", _methods_order(infos), columns, {}, {})
    for info in infos:
        name, multi = run_task(info, task)
        split = choose_set(info.path, eval_set)
        shown = {}  # the metric of each wanted one for this task, checked before any scoring
        for wanted_metric in wanted:
            chosen = wanted_metric
            if chosen == "auto":
                chosen = "mAP" if multi else "top1"
            if chosen.startswith("mAP") != multi:
                kind = "a multi-label" if multi else "a single-label"
                why = (
                    f"the protocol's table scores {', '.join(rule.metrics)}"
                    if not metric
                    else "--metric asks for it"
                )
                fix = "--metric mAP" if multi else "--metric top1 (or top5, mca)"
                raise ConfigError(
                    f"metric {chosen} does not apply to task {name!r} of {info.path}, "
                    f"{kind} task ({why}); use {fix}"
                )
            shown[wanted_metric] = chosen
        # reduce="max": the checkpoint with the best of what the table shows (--task, --metric)
        checkpoints = scored_checkpoints(info, split, rule, task, metric)
        ties = task_ties(name, _single_label(info))
        for wanted_metric, chosen in shown.items():
            value = reduce_checkpoints(
                [
                    _metric_value(
                        p["scores"][name], p["labels"][name], chosen, p.get("groups"), ties
                    )
                    for p in checkpoints
                ],
                rule,
            )
            column = f"{info.setting} {wanted_metric}" if several else info.setting
            _add(table, info, column, value)
            names_used[f"{name} {chosen}"] = None
            scored.setdefault(column, set()).add(f"{name} {chosen}")
        sets_used[info.path] = split
    if len(settings) > 1:
        for wanted_metric in wanted:
            mean_column = f"{MEAN} {wanted_metric}" if several else MEAN
            group = [f"{s} {wanted_metric}" if several else s for s in settings]
            kinds = sorted(set().union(*(scored.get(c, set()) for c in group)))
            if len(kinds) > 1:  # e.g. a CharadesEgo mAP beside a UCF->HMDB top-1
                table.notes.append(
                    f"no {mean_column} column: the settings are scored by different metrics "
                    f"({', '.join(kinds)}), which cannot be averaged"
                )
                continue
            table.columns.append(mean_column)
            for method in table.methods:
                _add_mean(table, method, group, mean_column)
    warn_mixed_sets(sets_used, table.notes)
    table.sets = sorted(set(sets_used.values()))
    table.title = f"{', '.join(table.sets)}: {', '.join(names_used)} (%)"
    return table


def _add_mean(table: AggregateTable, method: str, settings: list[str], column: str = MEAN) -> None:
    per_setting = [
        dict(zip(table.seeds.get((method, s), []), table.values.get((method, s), []), strict=True))
        for s in settings
    ]
    common = set.intersection(*(set(p) for p in per_setting)) if per_setting else set()
    for seed in sorted(common):
        table.seeds.setdefault((method, column), []).append(seed)
        table.values.setdefault((method, column), []).append(
            float(np.mean([p[seed] for p in per_setting]))
        )


def _epic100_table(
    infos: Sequence[RunInfo], eval_set: str, rule: protocols_lib.EvaluationRule
) -> AggregateTable:
    settings = _settings_order(infos)
    several = len(settings) > 1
    columns = [
        f"{setting} {task} top-{k}" if several else f"{task} top-{k}"
        for setting in settings
        for task, k in EPIC100_COLUMNS
    ]
    table = AggregateTable("", _methods_order(infos), columns, {}, {})
    sets_used: dict[Path, str] = {}
    for info in infos:
        if not {"verb", "noun"} <= _single_label(info):
            raise RunError(f"{info.path} has no verb and noun tasks: the epic100 layout needs both")
        split = choose_set(info.path, eval_set)
        sets_used[info.path] = split
        per_checkpoint = []
        for predictions in rule_predictions(info.path, split, rule.checkpoints, rule.reduce):
            verb, noun = predictions["labels"]["verb"], predictions["labels"]["noun"]
            known = (verb >= 0) & (noun >= 0)
            if not known.any():
                others = [  # labelled ones: EPIC-100's source_test has no labels either
                    s
                    for s in runs.prediction_sets(info.path)
                    if s != split and _has_labels(runs.read_predictions(info.path, s)["labels"])
                ]
                raise RunError(
                    f"{info.path}: {split} has no labelled segments to score: choose another "
                    f"--set (it has {', '.join(others) or 'no other'}); EPIC-100's "
                    "target_test labels are the challenge server's (avda evaluate RUN "
                    "--export-submission FILE --sls PT,TL,TD writes its file)"
                )
            per_checkpoint.append(
                epic100_accuracies(
                    predictions["scores"]["verb"][known],
                    predictions["scores"]["noun"][known],
                    verb[known],
                    noun[known],
                )
            )
        if rule.reduce == "max":  # one epoch for every column: the best action top-1
            main = [a["all_action_accuracy_at_1"] for a in per_checkpoint]
            per_checkpoint = [per_checkpoint[best_checkpoint(main)]]
        for task, k in EPIC100_COLUMNS:
            column = f"{info.setting} {task} top-{k}" if several else f"{task} top-{k}"
            key = f"all_{task}_accuracy_at_{k}"
            _add(table, info, column, reduce_checkpoints([a[key] for a in per_checkpoint], rule))
    warn_mixed_sets(sets_used, table.notes)
    table.sets = sorted(set(sets_used.values()))
    sets = ", ".join(table.sets)
    table.title = f"{sets}: EPIC-100 verb, noun and action accuracy (%)"
    return table
