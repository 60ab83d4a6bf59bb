"""``avda evaluate --per-class``: per method and class, the target accuracy (AP for a multi-label
task) as mean ± std over seeds, and the count of target segments of each class; with
``--confusion``, each run's confusion matrix (and each method's, summed over its seeds) as CSV.

The runs are those of a paper table (:func:`avda.evaluate.aggregate.aggregate`): one protocol's
runs, one run per method, setting and seed, scored on the set ``--set`` chooses, following the
protocol's evaluation rule (the per-class values of the last k checkpoints averaged, or the one
checkpoint a ``reduce="max"`` rule picks). The numbers are those of the report's per-class
figure and confusion figure (:func:`avda.scoring.metrics.per_class_accuracy`,
:func:`~avda.scoring.metrics.average_precision_per_class` over each ``score_group``'s maximum,
:func:`~avda.scoring.metrics.confusion_matrix`). Classes are named by the runs' cache
(:func:`avda.evaluate.classes.cache_class_names`), else by id; a class without a target segment
in a setting is left out of that setting's rows. The ``Mean`` row is, per seed, the mean over
the shown classes (the mean class accuracy, or the mAP over the classes that have a positive),
then mean ± std over the seeds.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avda import protocols as protocols_lib
from avda import runs, wording
from avda._io import atomic_write, atomic_write_texts
from avda.errors import ConfigError, RunError
from avda.evaluate import aggregate as aggregate_lib
from avda.evaluate import tables
from avda.evaluate.classes import cache_class_names, class_label
from avda.scoring.metrics import (
    average_precision_per_class,
    confusion_matrix,
    max_over_groups,
    mean_std,
    per_class_accuracy,
    predicted_classes,
    task_ties,
)

if TYPE_CHECKING:
    import pandas as pd

MEAN = "Mean"


@dataclasses.dataclass
class PerClassTable:
    """Per setting and class, each method's per-seed values (fractions in 0..1).

    ``values[(method, setting)]``: one ``(C,)`` array per seed (NaN: no target segment of
    that class); ``seeds[(method, setting)]``: the seeds, in the same order;
    ``segments[setting]``: ``(C,)`` target segments per class (for a multi-label task: the
    scored samples, one per ``score_group``, with the class as a positive);
    ``samples[setting]``: the scored samples (the Mean row's count); ``names[setting]``:
    class names by id (empty where the cache names none);
    ``confusion[(method, setting)]``: per seed the ``(C, C)`` counts (row = true class) of a
    single-label task, summed over the checkpoints the rule scores (the last k of a mean rule:
    each segment counted k times, the row-normalised diagonal the cells' accuracy)."""

    task: str
    what: str  # "accuracy" or "AP"
    sets: list[str]
    settings: list[str]
    methods: list[str]
    segments: dict[str, np.ndarray]
    names: dict[str, list[str]]
    values: dict[tuple[str, str], list[np.ndarray]]
    seeds: dict[tuple[str, str], list[int]]
    confusion: dict[tuple[str, str], list[np.ndarray]]
    samples: dict[str, int] = dataclasses.field(default_factory=dict)
    title: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)

    def classes(self, setting: str) -> list[int]:
        """The class ids with a target segment in ``setting``."""
        return [int(c) for c in np.flatnonzero(self.segments[setting] > 0)]

    def cell(self, method: str, setting: str, class_id: int | None) -> tuple[float, float, int]:
        """(mean, std, seeds) in % of one class (``None``: the Mean row); NaN where none."""
        per_seed = self.values.get((method, setting), [])
        if class_id is None:
            shown = self.classes(setting)
            values = [float(np.nanmean(v[shown])) for v in per_seed if len(shown)]
        else:
            values = [float(v[class_id]) for v in per_seed]
        values = np.array([v for v in values if not np.isnan(v)], dtype=np.float64) * 100.0
        if not len(values):
            return float("nan"), float("nan"), 0
        mean, std = mean_std(values)
        return mean, std, len(values)

    def to_frame(self) -> pd.DataFrame:
        """One row per setting, class (and the Mean row), and method: ``setting``, ``class``
        (id, empty for the Mean row), ``name``, ``segments``, ``method``, ``mean``, ``std``
        (in %; std NaN for one seed) and ``seeds``."""
        import pandas as pd

        rows = []
        for setting in self.settings:
            for class_id in [*self.classes(setting), None]:
                for method in self.methods:
                    if (method, setting) not in self.values:
                        continue
                    mean, std, count = self.cell(method, setting, class_id)
                    rows.append(
                        {
                            "setting": setting,
                            "class": "" if class_id is None else class_id,
                            "name": MEAN if class_id is None else self._name(setting, class_id),
                            "segments": int(
                                self.samples[setting]
                                if class_id is None
                                else self.segments[setting][class_id]
                            ),
                            "method": method,
                            "mean": mean,
                            "std": std,
                            "seeds": count,
                        }
                    )
        return pd.DataFrame(rows)

    def _name(self, setting: str, class_id: int) -> str:
        names = self.names.get(setting) or []
        return names[class_id] if class_id < len(names) and names[class_id] else ""

    def display(
        self, setting: str, *, digits: int = 1, methods: Sequence[str] | None = None
    ) -> tuple[list[str], list[list[str]]]:
        """The header and rows of one setting's printed table (cells ``mean ± std``, ``-``
        where none): a column per method of ``methods``, by default those with runs there."""
        if methods is None:
            methods = [m for m in self.methods if (m, setting) in self.values]
        header = ["class", "name", "segments", *methods]
        rows = []
        for class_id in [*self.classes(setting), None]:
            if class_id is None:
                row = [MEAN, "", str(int(self.samples[setting]))]
            else:
                name = self._name(setting, class_id)
                row = [str(class_id), name, str(int(self.segments[setting][class_id]))]
            for method in methods:
                mean, std, _ = self.cell(method, setting, class_id)
                row.append(
                    "-" if np.isnan(mean) else tables.format_mean_std_cell(mean, std, digits=digits)
                )
            rows.append(row)
        return header, rows


def _scored(predictions: dict[str, Any], task: str, multi: bool) -> tuple[np.ndarray, np.ndarray]:
    """The scores and labels one task's per-class numbers are of (as the report's figures):
    a multi-label task's samples are its ``score_group``s (the maximum over their rows);
    a single-label task's unlabelled segments are left out."""
    scores, labels = predictions["scores"][task], predictions["labels"][task]
    if multi:
        return max_over_groups(scores, labels, predictions.get("groups"))
    known = labels >= 0
    return scores[known], labels[known]


@dataclasses.dataclass
class RunClasses:
    """One run's per-class numbers of one task and set under a protocol's rule: ``values``
    ``(C,)`` fractions (NaN: no segment of the class), ``counts`` ``(C,)`` segments per class
    (a multi-label task's: scored samples with it as a positive), ``samples`` (the scored
    ones), ``matrix`` ``(C, C)`` the confusion counts of a single-label task summed over the
    checkpoints the rule scores (None for a multi-label task)."""

    values: np.ndarray
    counts: np.ndarray
    samples: int
    matrix: np.ndarray | None


def run_classes(
    info: aggregate_lib.RunInfo,
    split: str,
    rule: protocols_lib.EvaluationRule,
    task: str,
    multi: bool,
) -> RunClasses:
    """``task``'s per-class numbers of ``info``'s run on ``split`` as ``rule``'s table scores
    it (:func:`avda.evaluate.aggregate.scored_checkpoints`: the final predictions, the last k
    checkpoints' values averaged, or the best checkpoint by ``task``): the per-class table's
    cells and the report's per-run figures."""
    checkpoints = aggregate_lib.scored_checkpoints(info, split, rule, task)
    ties = task_ties(task, aggregate_lib._single_label(info))  # as the run's top-1 and mca
    per_checkpoint, counts, samples, matrix = [], np.zeros(0, dtype=np.int64), 0, None
    for predictions in checkpoints:
        scores, labels = _scored(predictions, task, multi)
        if multi:  # the samples its AP scores: those with a positive
            per_checkpoint.append(average_precision_per_class(scores, labels))
            positives = np.asarray(labels) > 0
            counts, samples = positives.sum(axis=0), int(positives.any(axis=1).sum())
        else:
            per_checkpoint.append(per_class_accuracy(scores, labels, ties=ties))
            counts, samples = np.bincount(labels, minlength=scores.shape[1]), len(labels)
            # summed over the checkpoints the rule scores: its row-normalised diagonal is
            # the mean of their per-class accuracies, the table's cells
            found = confusion_matrix(labels, predicted_classes(scores, ties), scores.shape[1])
            matrix = found if matrix is None else matrix + found
    values = per_checkpoint[0]
    if len(per_checkpoint) > 1:
        with warnings.catch_warnings():  # a class absent from every checkpoint stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            values = np.nanmean(np.stack(per_checkpoint), axis=0)
    return RunClasses(values, counts, samples, matrix)


def per_class(
    run_dirs: Sequence[str | Path],
    *,
    eval_set: str = "auto",
    task: str | None = None,
    protocol: str | None = None,
) -> PerClassTable:
    """The per-class table of ``run_dirs`` (complete runs, see
    :func:`avda.evaluate.aggregate.find_runs`) for ``task`` (default: each run's first)."""
    infos = aggregate_lib.describe_runs(run_dirs)
    if not infos:
        raise RunError("no runs to aggregate")
    infos, chosen, notes = aggregate_lib._same_protocol(infos, protocol)
    aggregate_lib._one_run_per_seed(infos)
    rule = protocols_lib.rule_for(chosen)
    settings = aggregate_lib._settings_order(infos)
    table = PerClassTable(
        task="",
        what="",
        sets=[],
        settings=settings,
        methods=aggregate_lib._methods_order(infos),
        segments={},
        names={},
        values={},
        seeds={},
        confusion={},
        notes=notes,
    )
    kinds: dict[str, None] = {}
    sets_used: dict[Path, str] = {}
    names_cache: dict[str, dict[str, list[str]]] = {}
    for info in infos:
        name, multi = aggregate_lib.run_task(info, task)
        kinds[f"{name} {'AP' if multi else 'accuracy'}"] = None
        split = aggregate_lib.choose_set(info.path, eval_set)
        sets_used[info.path] = split
        if split not in table.sets:
            table.sets.append(split)
        found = run_classes(info, split, rule, name, multi)
        counts, samples, values, matrix = found.counts, found.samples, found.values, found.matrix
        if not counts.any():
            raise RunError(f"{info.path}: {split} has no labelled {name} segments to score")
        key = (info.method, info.setting)
        table.values.setdefault(key, []).append(values)
        table.seeds.setdefault(key, []).append(info.seed)
        if info.setting not in table.segments:
            table.segments[info.setting] = counts
            table.samples[info.setting] = samples
        elif not np.array_equal(table.segments[info.setting], counts):
            table.notes.append(
                f"{info.path}: its {split} segments per class differ from the first run of "
                f"{info.setting}'s; the segments column counts the first run's"
            )
        if matrix is not None:
            table.confusion.setdefault(key, []).append(matrix)
        if info.setting not in table.names:
            cache = str(runs.read_config(info.path).get("cache", ""))
            if cache not in names_cache:
                names_cache[cache] = cache_class_names(cache) if cache else {}
            table.names[info.setting] = names_cache[cache].get(name, [])
    if len(kinds) > 1:
        raise ConfigError(
            f"the runs score different tasks or kinds ({', '.join(kinds)}): one per-class "
            "table holds one; choose the task with --task, or pass runs of one kind"
        )
    table.task, table.what = next(iter(kinds)).rsplit(" ", 1)
    aggregate_lib.warn_mixed_sets(sets_used, table.notes)
    table.title = (
        f"{protocols_lib.describe(chosen)}; {', '.join(sorted(table.sets))}: per-class "
        f"{table.task} {table.what} (%)"
    )
    if rule.checkpoints > 1 and rule.reduce != "max":
        table.notes.append(
            f"each class's value is the mean over the last {rule.checkpoints} checkpoints; "
            f"a confusion matrix sums their predictions (each segment counted "
            f"{rule.checkpoints} times)"
        )
    left_out = getattr(run_dirs, "left_out", [])
    if left_out:
        table.notes.append(f"{len(left_out)} run(s) found but left out: {'; '.join(left_out[:2])}")
    table.notes = [wording.spelt(note) for note in table.notes]  # avda.evaluate: its keywords
    return table


def evaluate(
    paths: Sequence[str | Path],
    *,
    eval_set: str = "auto",
    task: str | None = None,
    protocol: str | None = None,
    out: str | Path | None = None,
    confusion: bool = False,
) -> tuple[PerClassTable, list[Path]]:
    """``avda evaluate --per-class`` and ``avda.evaluate(per_class=True)``: the table of the
    runs found under ``paths``, and the files written (``out``: OUT.md, OUT.csv, OUT.tex;
    ``confusion``: the matrices in OUT.confusion/, refused before any file is written for a
    multi-label task)."""
    if protocol is not None:
        protocols_lib.get(protocol)  # an unknown name lists the valid ones, before any run
    table = per_class(
        aggregate_lib.find_runs(paths), eval_set=eval_set, task=task, protocol=protocol
    )
    if confusion and out is not None:  # a clash of folders is refused before any file
        confusion_places(table, out)
    elif confusion:
        check_confusion(table)  # a multi-label task is refused without -o too
    written = write(table, out) if out is not None else []
    if confusion and out is not None:
        written += write_confusion(table, out)
    return table, written


# ------------------------------------------------------------------------------ rendering
def _markdown(table: PerClassTable) -> str:
    lines = [f"{table.title}", ""]
    for setting in table.settings:
        header, rows = table.display(setting)
        lines += [f"**{setting}**", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join(["---:", "---", "---:"] + ["---:"] * (len(header) - 3)) + "|")
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows
        ]
        lines.append("")
    lines += [f"Note: {note}" for note in table.notes]
    return "\n".join(lines).rstrip("\n")


def _latex(table: PerClassTable) -> str:
    out = [f"% {table.title}"]
    for setting in table.settings:
        header, rows = table.display(setting)
        out += [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{tables.latex_escape(setting + ': ' + table.title)}}}",
            "\\begin{tabular}{rl" + "r" * (len(header) - 2) + "}",
            "\\toprule",
            " & ".join(tables.latex_escape(h) for h in header) + " \\\\",
            "\\midrule",
        ]
        for row in rows:
            cells = [tables.latex_escape(c).replace("±", "$\\pm$") for c in row]
            if row[0] == MEAN:
                out.append("\\midrule")
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out)


def _html(table: PerClassTable) -> str:
    """One ``<table class="per-class">`` in the style of the report's results table: the
    title and notes in its caption; per setting (a row header spanning its rows) a row per
    class and the ``Mean`` row, a column per method of the table."""
    import html

    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in ("Setting", "Class", "Name", "Segments", *table.methods)
    )
    body = []
    for setting in table.settings:
        _, rows = table.display(setting, methods=table.methods)
        for position, row in enumerate(rows):
            cells = "".join(
                f'<td class="name">{html.escape(c)}</td>'
                if i == 1
                else f"<td>{html.escape(c)}</td>"
                for i, c in enumerate(row)
            )
            first = f'<th rowspan="{len(rows)}">{html.escape(setting)}</th>' if not position else ""
            mean = ' class="mean"' if row[0] == MEAN else ""
            body.append(f"<tr{mean}>{first}{cells}</tr>")
    segments = (
        "the scored samples with the class as a positive"
        if table.what == "AP"
        else "the class's target segments"
    )
    mean = "the mAP over them" if table.what == "AP" else "the mean class accuracy (mca)"
    caption = (
        f"{table.title}; mean ± std over seeds; segments: {segments}; {MEAN}: per seed the "
        f"mean over the classes shown, {mean}"
    )
    caption = tables.caption_with_notes(caption, table.notes)
    return (
        f'<table class="per-class"><caption>{html.escape(caption)}</caption><thead><tr>{head}'
        f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def render(table: PerClassTable, fmt: str = "markdown") -> str:
    """The table as text in ``fmt`` (markdown, latex, csv: :meth:`PerClassTable.to_frame`,
    html)."""
    if fmt == "markdown":
        return _markdown(table)
    if fmt == "latex":
        return _latex(table)
    if fmt == "html":
        return _html(table)
    if fmt == "csv":
        return table.to_frame().to_csv(index=False, float_format="%.4f")
    raise ConfigError(f"--format must be one of {', '.join(tables.FORMATS)}, got {fmt!r}")


def write(table: PerClassTable, out: str | Path) -> list[Path]:
    """Write ``out.md``, ``out.csv`` and ``out.tex``, all whole or none; returns the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    texts = {
        tables.table_file(out, tables._SUFFIXES[fmt]): render(table, fmt).rstrip("\n") + "\n"
        for fmt in ("markdown", "csv", "latex")
    }
    atomic_write_texts(texts)  # a full disk never leaves a new .md beside an earlier .csv
    return list(texts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text.replace("→", "-to-")).strip("_") or "_"


def confusion_folder(out: str | Path) -> Path:
    """Where ``--confusion`` writes beside ``-o OUT``: ``OUT.confusion/``."""
    return tables.table_file(out, ".confusion")


def check_confusion(table: PerClassTable) -> None:
    """Refuse ``--confusion`` for a multi-label task, which has no confusion matrix."""
    if not table.confusion:
        raise ConfigError(
            f"--confusion: task {table.task!r} is multi-label ({table.what} per class), which "
            "has no confusion matrix; leave out --confusion"
        )


def confusion_places(table: PerClassTable, out: str | Path) -> dict[tuple[str, str], Path]:
    """The folder of each (method, setting) under ``OUT.confusion/``, refused (after
    :func:`check_confusion`) where two would share one: known before any file is written."""
    check_confusion(table)
    folder = confusion_folder(out)
    places: dict[tuple[str, str], Path] = {}
    owner: dict[Path, tuple[str, str]] = {}
    for method, setting in table.confusion:
        place = folder / _slug(method) / _slug(setting)
        if owner.setdefault(place, (method, setting)) != (method, setting):
            raise ConfigError(
                f"--confusion: {owner[place]} and {(method, setting)} would share {place}; "
                "give the sweep's methods other labels"
            )
        places[(method, setting)] = place
    return places


def write_confusion(table: PerClassTable, out: str | Path) -> list[Path]:
    """Each run's confusion matrix (``OUT.confusion/<method>/<setting>/seed<N>.csv``; summed
    over the last k checkpoints a rule averages, as :attr:`PerClassTable.confusion`) and each
    method's summed over its seeds (``.../sum.csv``): counts, row = true class, column =
    predicted class, both labelled by class name (else id); every class of the task. A
    ``seed<N>.csv`` an earlier call left in a folder written now is removed (its seed is not
    in this ``sum.csv``)."""
    import pandas as pd

    places = confusion_places(table, out)
    written = []
    for (method, setting), matrices in table.confusion.items():
        place = places[(method, setting)]
        place.mkdir(parents=True, exist_ok=True)
        names = table.names.get(setting) or None
        labels = [class_label(names, c) for c in range(matrices[0].shape[0])]
        seeds = table.seeds[(method, setting)]
        for name, matrix in [*((f"seed{s}", m) for s, m in zip(seeds, matrices, strict=True)),
                             ("sum", np.sum(matrices, axis=0))]:  # fmt: skip
            frame = pd.DataFrame(matrix, index=pd.Index(labels, name="true"), columns=labels)
            path = place / f"{name}.csv"
            atomic_write(path, frame.to_csv)  # whole or not at all
            written.append(path)
        # a seed an earlier --confusion wrote here and this one has not: its sum.csv is gone
        for stale in set(place.glob("seed*.csv")) - set(written):
            if re.fullmatch(r"seed-?\d+\.csv", stale.name):
                stale.unlink(missing_ok=True)
    return written
