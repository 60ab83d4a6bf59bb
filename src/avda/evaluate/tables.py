"""Results tables from run directories: one row per run, metrics per evaluation set."""

from __future__ import annotations

import decimal
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avda import runs
from avda._io import atomic_write_texts
from avda.errors import ConfigError, RunError
from avda.paths import FILE_TYPES, file_type_alone, names_a_folder
from avda.scoring.protocols import set_metrics

SET_ORDER = ("source_val", "source_test", "target_val", "target_test")


def run_metrics(run: Path) -> dict[str, float]:
    """Metrics recomputed from a run's stored predictions (not trusted from its logs)."""
    metrics: dict[str, float] = {}
    config = runs.read_config(run)
    multi = {t["name"] for t in config.get("tasks", []) if t.get("multi_label")}
    _refuse_lost_predictions(run)
    for name in runs.prediction_sets(run):
        pred = runs.read_predictions(run, name)
        # as the run's loop scored it: an mAP by score_group where recorded, and with verb and
        # noun EPIC-100's action top-1/top-5
        metrics.update(
            set_metrics(
                name, pred["scores"], pred["labels"], multi_label=multi, groups=pred["groups"]
            )
        )
    return metrics


def _refuse_lost_predictions(run: Path) -> None:
    """A complete run whose ``run.json`` scored a set that has no predictions file: they were
    deleted after it finished (its row would have had no metric columns, silently)."""
    try:
        recorded = json.loads((Path(run) / runs.STATUS).read_text()).get("metrics") or {}
    except (OSError, ValueError, AttributeError):
        return
    scored = {key.split("/")[0] for key in recorded if isinstance(key, str)}
    lost = sorted(scored - set(runs.prediction_sets(run)))
    if lost:
        raise RunError(
            f"{run} is complete but has no predictions for {', '.join(lost)} "
            f"({Path(run) / runs.PREDICTIONS}/{lost[0]}.npz); they were removed after it "
            "finished: remove run.json and train it again with the same command"
        )


def results_table(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run: method, head, setting, seed, then ``<set>/<task>/<metric>`` columns (in
    %). ``method`` names each run as the paper table does (its sweep's label, its protocol
    role, or its head told apart by the config fields that differ); runs it does not tell
    apart on one setting and seed (a copied run) get their path below the runs' common folder
    too. (It was that path alone: ``seed0`` for a run of one method, or a method's seeds.)"""
    from avda.evaluate.aggregate import describe_runs, setting_label

    run_dirs = [Path(run) for run in run_dirs]
    for run in run_dirs:
        if not runs.is_complete(run):
            from avda.cache.lock import training_holder

            holder = training_holder(run)
            if holder is not None:
                raise RunError(
                    f"{run} is still training ({holder}); evaluate it when it has finished (if "
                    "that process is gone, finish the run with the same `avda train` command)"
                )
            raise RunError(
                f"{run} is not a complete run (no run.json with status complete); finish it: "
                f"`avda train --config {run / runs.CONFIG} -o {run}` resumes it (a sweep's run: "
                "run the same `avda sweep` again)"
            )
    rows = []
    infos = describe_runs(run_dirs)
    for info, method in zip(infos, _method_names(infos), strict=True):
        row = {
            "method": method,
            "head": info.head,
            "setting": setting_label(info.source, info.target),  # the paper tables' D1→D2
            "seed": info.seed,
            "protocol": info.protocol or "none",
        }
        row.update({k: 100.0 * v for k, v in run_metrics(info.path).items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    fixed = ["method", "head", "setting", "seed", "protocol"]
    order = sorted(
        (c for c in table.columns if c not in fixed),
        key=lambda c: (SET_ORDER.index(c.split("/")[0]) if c.split("/")[0] in SET_ORDER else 9, c),
    )
    return table[fixed + order]


def _method_names(infos: Sequence) -> list[str]:
    """Each run's method (:class:`~avda.evaluate.aggregate.RunInfo`), with its path below the
    runs' common folder where another row would read the same: one name, setting (on
    another cache too: the row does not show it), seed and protocol."""
    keys = [(i.method, i.source, i.target, i.seed, i.protocol) for i in infos]
    counts = Counter(keys)
    paths = run_labels([i.path for i in infos])
    return [
        f"{info.method} [{path}]" if counts[key] > 1 else info.method
        for info, key, path in zip(infos, keys, paths, strict=True)
    ]


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Each run's path below the runs' common folder (its folder name when alone)."""
    paths = [Path(os.path.abspath(run)) for run in run_dirs]
    if len(paths) < 2:
        return [path.name for path in paths]
    root = Path(os.path.commonpath(paths))
    return [path.relative_to(root).as_posix() if path != root else path.name for path in paths]


def to_markdown(table: pd.DataFrame, *, digits: int = 1) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = (
        "|"
        + "|".join(
            "---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns
        )
        + "|"
    )
    lines = [header, rule]
    for _, row in table.iterrows():
        cells = []
        for column in table.columns:
            value = row[column]
            if isinstance(value, float | np.floating):
                # rounded half up as the paper tables are (56.25 printed 56.2 here, 56.3 there)
                cells.append("" if np.isnan(value) else decimal_text(value, digits))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(table: pd.DataFrame, out: str | Path) -> list[Path]:
    """Write ``out.md`` and ``out.csv`` (both whole or neither); returns the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    markdown, csv = table_file(out, ".md"), table_file(out, ".csv")
    # a killed evaluate or a full disk never leaves a table missing rows, nor a new .md beside
    # the .csv of an earlier evaluate
    atomic_write_texts(
        {
            markdown: to_markdown(table) + "\n",
            csv: table.to_csv(index=False, float_format="%.4f"),
        }
    )
    return [markdown, csv]


# ------------------------------------------------------------------------------ paper layouts
# Rendering of avda.evaluate.aggregate.AggregateTable (methods x settings, mean ± std over seeds):
# Markdown, LaTeX (booktabs), HTML and CSV; the best mean per column in bold; with a baseline,
# each cell also shows the gain over it in percentage points.

FORMATS = ("markdown", "latex", "csv", "html")
_SUFFIXES = {"markdown": ".md", "latex": ".tex", "csv": ".csv", "html": ".html"}


# Other programs' file types (every known type but the tables' own): -o x.pdf
# wrote x.pdf.md without a word. A suffix not listed is part of the name (-o results.final:
# results.final.md; tab.v1, results.2026.12), as a user naming runs writes them.
_OTHER_FORMATS = FILE_TYPES - {suffix[1:] for suffix in _SUFFIXES.values()}


def _other_format(suffix: str) -> bool:
    """Whether ``suffix`` (``.zip``, any case) is another program's file type, no table's
    (:func:`check_out`)."""
    return suffix[1:].lower() in _OTHER_FORMATS


def check_out(out: str | Path | None) -> None:
    """Refuse ``-o OUT`` named as a file of another format (``-o x.pdf``, ``x.zip``), before any
    run is read: the tables are OUT.md, OUT.csv and OUT.tex, and x.pdf.md was written without a
    word (the command line and ``avda.evaluate`` alike). Another program's file type
    (:data:`_OTHER_FORMATS`) is refused; any other suffix (``results.final``, ``tab.v1``,
    ``results.2026.12``) is part of the name (:func:`table_file`). An OUT that names no table,
    a folder (``-o .``: an internal error once the runs were read; ``-o sub/`` or ``sub/.``,
    which Path drops: it wrote sub.md) or a file type alone (``-o .md`` wrote the hidden
    .md.md, ``-o .pdf`` .pdf.md), is refused too, offering a visible name (results) in that folder;
    an existing folder named without a slash (``-o tables``) is the tables' name, tables.md."""
    if out is None:
        return
    path = Path(out)  # drops a trailing slash or '/.', which mean a folder
    folder = names_a_folder(out)
    if folder or file_type_alone(path.name):
        named = (path if folder else path.parent) / "results"
        raise ConfigError(
            f"-o: {out} names no table (the tables are OUT.md, OUT.csv and OUT.tex); give them "
            f"a name: {named}"
        )
    out = path
    if _other_format(out.suffix):
        name = out.with_suffix("")
        while _other_format(name.suffix):  # x.tar.gz: x, not x.tar (refused in turn)
            name = name.with_suffix("")
        replaced = ", ".join(sorted(_SUFFIXES.values()))
        raise ConfigError(
            f"-o: {out} is named as a {out.suffix} file, and the tables are Markdown, CSV and "
            f"LaTeX (OUT.md, OUT.csv, OUT.tex); name them {name} (a suffix "
            f"{replaced} is replaced by each table's; another is kept in the name: tab.v1.md)"
        )


def table_file(out: str | Path, suffix: str) -> Path:
    """The file ``-o OUT`` writes with ``suffix`` (``.md``...): OUT's own suffix is replaced
    only when it is a table's (``-o results.md``: results.md, results.csv); another is part of
    the name (``-o tab.v1``: tab.v1.md; it wrote tab.md, which ``-o tab.v2`` overwrote)."""
    out = Path(out)
    table = out.suffix.lower() in _SUFFIXES.values()  # -o R.MD: R.md, as before, not R.MD.md
    stem = out.name.removesuffix(out.suffix) if table else out.name
    return out.with_name(stem + suffix)


def format_mean_std_cell(mean: float, std: float, *, digits: int = 1, plus_minus: str = "±") -> str:
    """``"61.0 ± 1.2"``, ``"61.0"`` for one seed, ``"-"`` for an empty cell."""
    if np.isnan(mean):
        return "-"
    if np.isnan(std):
        return decimal_text(mean, digits)
    return f"{decimal_text(mean, digits)} {plus_minus} {decimal_text(std, digits)}"


def decimal_text(value: float, digits: int) -> str:
    """``value`` rounded half up as the decimal it prints as (every avda table prints so): a
    paper's 94.05 is 94.1, where ``f"{94.05:.1f}"`` gives 94.0 (the binary float is
    94.04999...)."""
    if not np.isfinite(value):
        return f"{value}"
    with decimal.localcontext() as context:
        context.prec = 400  # any float's digits (the default 28 refuses 1e27 and more)
        exact = decimal.Decimal(repr(float(value)))
        step = decimal.Decimal(1).scaleb(-digits)
        text = format(exact.quantize(step, rounding=decimal.ROUND_HALF_UP), "f")
    return "0" + text[2:] if text.startswith("-0") and not text.strip("-0.") else text


def _gain_text(gain: float, digits: int, paired: int | None = None) -> str:
    """`` (+1.3)``: rounded half up as the means are (a gain of -0.001 is +0.0, not -0.0);
    `` (+1.3 over n=2)`` for a gain paired over the 2 seeds both cells have."""
    if np.isnan(gain):
        return ""
    text = decimal_text(gain, digits)
    over = f" over n={paired}" if paired is not None else ""
    return f" ({text if text.startswith('-') else '+' + text}{over})"


def _paired_notes(table, baseline: str | None) -> list[str]:
    """The footnote for gains paired over the seeds both cells have (marked ``over n=k``)."""
    if not baseline:
        return []
    paired = any(
        table.paired(m, baseline, c) is not None
        for m in table.methods
        if m != baseline
        for c in table.columns
    )
    if not paired:
        return []
    return [
        f"(+g over n=k): the mean gain over {baseline} on the k seeds both were run with, "
        "where one of them lacks a seed the other has."
    ]


def _published(table) -> set[str]:
    return set(getattr(table, "published", ()) or ())


def _most_seeds(table) -> int:
    """The most seeds of any cell of a method avda ran (not a paper's published row)."""
    counts = [
        table.cell(m, c)[2] for m in table.methods if m not in _published(table)
        for c in table.columns
    ]  # fmt: skip
    return max(counts, default=0)


def _seed_notes(table) -> list[str]:
    """The footnote for cells over fewer seeds than the others (marked ``(n=k)``)."""
    most = _most_seeds(table)
    fewer = any(
        0 < table.cell(m, c)[2] < most
        for m in table.methods
        if m not in _published(table)
        for c in table.columns
    )
    return [f"(n=k): a cell over k seeds where others have {most}."] if fewer else []


def _best_shown(table, column: str, digits: int) -> set[str]:
    """The methods whose mean in ``column`` prints as the best one: two means that print the
    same (100.0 and 99.98 at one decimal) are both bold, as a reader sees a tie."""
    best = table.best(column)
    if not best:
        return best
    shown = decimal.Decimal(decimal_text(table.cell(next(iter(best)), column)[0], digits))
    return {
        method
        for method in table.methods
        if method not in _published(table)
        and np.isfinite(mean := table.cell(method, column)[0])
        and decimal.Decimal(decimal_text(mean, digits)) == shown
    }


def _cells(
    table, baseline: str | None, digits: int, plus_minus: str
) -> list[list[tuple[str, bool]]]:
    """Per method, per column: (text, is_best)."""
    gains = table.gains(baseline) if baseline else {}
    best = {column: _best_shown(table, column, digits) for column in table.columns}
    most = _most_seeds(table)
    rows = []
    for method in table.methods:
        row = []
        for column in table.columns:
            mean, std, count = table.cell(method, column)
            text = format_mean_std_cell(mean, std, digits=digits, plus_minus=plus_minus)
            if baseline and method != baseline and not np.isnan(mean):
                paired = table.paired(method, baseline, column)
                text += _gain_text(gains[(method, column)], digits, paired)
            if 0 < count < most and method not in _published(table):
                text += f" (n={count})"  # fewer seeds than the others: not comparable as is
            row.append((text, method in best[column]))
        rows.append(row)
    return rows


def aggregate_markdown(table, *, baseline: str | None = None, digits: int = 1) -> str:
    """The table in GitHub Markdown; best per column in **bold**."""
    header = "| Method | " + " | ".join(table.columns) + " |"
    rule = "|---|" + "|".join("---:" for _ in table.columns) + "|"
    lines = [header, rule]
    for method, row in zip(table.methods, _cells(table, baseline, digits, "±"), strict=True):
        cells = [f"**{text}**" if best else text for text, best in row]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    notes = [f"{table.title}; mean ± std over seeds; best per column in bold."]
    if baseline:
        notes.append(f"In parentheses: gain over {baseline} in percentage points.")
    notes.extend(_seed_notes(table))
    notes.extend(_paired_notes(table, baseline))
    notes.extend(getattr(table, "notes", []))
    return "\n".join(lines) + "\n\n" + " ".join(notes)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters; ``→`` becomes ``$\\rightarrow$``. Line breaks and
    other control characters become spaces: a label stays on its table row (and a title in
    its ``%`` comment line)."""
    text = "".join(" " if ord(ch) < 32 or ch == "\x7f" else ch for ch in str(text))
    escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return escaped.replace("→", r"$\rightarrow$").replace("±", r"$\pm$")


def aggregate_latex(table, *, baseline: str | None = None, digits: int = 1) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); best per column in bold."""
    lines = [
        "% " + latex_escape(table.title),
        r"\begin{tabular}{l" + "c" * len(table.columns) + "}",
        r"\toprule",
        "Method & " + " & ".join(latex_escape(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for method, row in zip(table.methods, _cells(table, baseline, digits, "±"), strict=True):
        cells = [
            rf"\textbf{{{latex_escape(text)}}}" if best else latex_escape(text)
            for text, best in row
        ]
        lines.append(latex_escape(method) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = [*_seed_notes(table), *_paired_notes(table, baseline), *getattr(table, "notes", [])]
    lines += ["% " + latex_escape(note) for note in notes]
    return "\n".join(lines)


def caption_with_notes(caption: str, notes: Sequence[str]) -> str:
    """An HTML table's caption followed by its notes, as sentences: one full stop between
    them (notes end with their own)."""
    for note in notes:
        caption += ("" if caption.endswith(".") else ".") + f" {note}"
    return caption


def aggregate_html(table, *, baseline: str | None = None, digits: int = 1) -> str:
    """An HTML ``<table>`` (class ``results``); best per column in ``<b>``."""
    from html import escape

    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for method, row in zip(table.methods, _cells(table, baseline, digits, "±"), strict=True):
        cells = "".join(
            f"<td><b>{escape(text)}</b></td>" if best else f"<td>{escape(text)}</td>"
            for text, best in row
        )
        body.append(f"<tr><th>{escape(method)}</th>{cells}</tr>")
    caption = table.title + "; mean ± std over seeds; best in bold"
    if baseline:
        caption += f"; in parentheses the gain over {baseline}"
    notes = [*_seed_notes(table), *_paired_notes(table, baseline), *getattr(table, "notes", [])]
    caption = caption_with_notes(caption, notes)
    return (
        f'<table class="results"><caption>{escape(caption)}</caption><thead><tr><th>Method</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def aggregate_frame(table, *, baseline: str | None = None) -> pd.DataFrame:
    """Numbers for a CSV: ``method``, then ``<column> mean``, ``std``, ``seeds`` (and ``gain``
    with ``gain seeds``: the seeds it is over, those both cells have where it is paired)."""
    gains = table.gains(baseline) if baseline else {}
    rows = []
    for method in table.methods:
        row: dict[str, object] = {"method": method}
        for column in table.columns:
            mean, std, count = table.cell(method, column)
            row[f"{column} mean"] = mean
            row[f"{column} std"] = std
            row[f"{column} seeds"] = count
            if baseline:
                row[f"{column} gain"] = gains[(method, column)]
                paired = table.paired(method, baseline, column)
                row[f"{column} gain seeds"] = count if paired is None else paired
        rows.append(row)
    return pd.DataFrame(rows)


def render_aggregate(table, fmt: str = "markdown", *, baseline: str | None = None) -> str:
    """The table as text in ``fmt`` (markdown, latex, csv, html)."""
    if fmt == "markdown":
        return aggregate_markdown(table, baseline=baseline)
    if fmt == "latex":
        return aggregate_latex(table, baseline=baseline)
    if fmt == "html":
        return aggregate_html(table, baseline=baseline)
    if fmt == "csv":
        return aggregate_frame(table, baseline=baseline).to_csv(index=False, float_format="%.4f")
    raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def write_aggregate(
    table,
    out: str | Path,
    *,
    formats: Sequence[str] = ("markdown", "csv", "latex"),
    baseline: str | None = None,
) -> list[Path]:
    """Write ``out.md``, ``out.csv``, ``out.tex`` (those in ``formats``; all whole or none, as
    :func:`write_tables`); returns the paths."""
    out = Path(out)
    texts = {}
    for fmt in formats:
        if fmt not in _SUFFIXES:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        texts[table_file(out, _SUFFIXES[fmt])] = (
            render_aggregate(table, fmt, baseline=baseline).rstrip("\n") + "\n"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_texts(texts)  # a full disk never leaves a new .md beside an earlier .csv
    return list(texts)


def choose_columns(
    table: pd.DataFrame, eval_set: str, task: str | None, metric: str | None
) -> pd.DataFrame:
    """The per-run table's ``<set>/<task>/<metric>`` columns that ``--set``, ``--task`` and
    ``--metric`` choose (each: all when not given); a choice no column has is refused."""
    scored = [c for c in table.columns if c.count("/") == 2]
    wanted = {0: None if eval_set == "auto" else eval_set, 1: task, 2: metric}
    kept = list(scored)
    for position, value in wanted.items():
        if value is None:
            continue
        have = sorted({c.split("/")[position] for c in kept})
        kept = [c for c in kept if c.split("/")[position] == value]
        if not kept:
            option = ("--set", "--task", "--metric")[position]
            raise ConfigError(
                f"{option} {value}: the runs' table has no such column (it has: "
                f"{', '.join(have) or 'none'})"
            )
    return table[[c for c in table.columns if c not in scored or c in kept]]


def check_layout(layout: str, *, protocol: str | None, baseline: str | None) -> None:
    """``avda evaluate``'s ``layout`` (``runs`` or a paper layout), and the options only a
    paper layout takes: refused in one line, for the command line and ``avda.evaluate`` alike
    (the Python call ignored ``protocol`` in the runs layout, and left ``runs`` out of the
    valid layouts)."""
    from avda.evaluate.aggregate import LAYOUTS

    if layout not in ("runs", *LAYOUTS):
        raise ConfigError(f"unknown --layout {layout!r}; valid: runs, {', '.join(LAYOUTS)}")
    if layout != "runs":
        return
    if protocol is not None:
        raise ConfigError(
            "--protocol: only a paper layout applies a protocol's evaluation rule; "
            "add --layout auto"
        )
    if baseline:
        raise ConfigError("--compare: only a paper layout compares methods; add --layout auto")


def check_per_class(
    per_class: bool,
    confusion: bool,
    *,
    layout: str,
    metric: str | None,
    baseline: str | None,
    out: str | Path | None,
) -> None:
    """The options ``--per-class`` and ``--confusion`` take, refused in one line (for the
    command line and ``avda.evaluate`` alike)."""
    if confusion and not per_class:
        raise ConfigError("--confusion writes the per-class table's matrices: add --per-class")
    if confusion and out is None:
        raise ConfigError("--confusion writes CSV files into OUT.confusion/: add -o OUT")
    if not per_class:
        return
    if layout not in ("runs", "auto", "settings"):
        raise ConfigError(
            f"--per-class with --layout {layout}: the per-class table scores one task (leave "
            "out --layout, and choose the task with --task verb or --task noun)"
        )
    if metric is not None:
        raise ConfigError(
            f"--metric {metric} with --per-class: its cells are each class's accuracy (AP for "
            "a multi-label task); leave out --metric"
        )
    if baseline:
        raise ConfigError(
            f"--compare {baseline} with --per-class: the per-class table shows no gains; leave "
            "out --compare"
        )


def evaluate_runs(
    paths: Sequence[str | Path],
    *,
    layout: str = "runs",
    eval_set: str = "auto",
    task: str | None = None,
    metric: str | None = None,
    baseline: str | None = None,
    fmt: str = "markdown",
    out: str | Path | None = None,
    protocol: str | None = None,
    per_class: bool = False,
    confusion: bool = False,
) -> tuple[str, list[Path]]:
    """What ``avda evaluate`` prints and writes: the per-run table (``layout="runs"``, as before)
    or a paper layout (``auto``, ``settings``, ``epic100``) over the runs found under ``paths``;
    ``per_class``: the per-class table (:mod:`avda.evaluate.per_class`) instead, and with
    ``confusion`` the confusion matrices as CSV under ``OUT.confusion/``."""
    from avda.evaluate import aggregate as aggregate_lib

    check_out(out)
    check_per_class(per_class, confusion, layout=layout, metric=metric, baseline=baseline, out=out)
    if fmt not in FORMATS:  # before any run is read
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if per_class:
        from avda.evaluate import per_class as per_class_lib

        table, written = per_class_lib.evaluate(
            paths, eval_set=eval_set, task=task, protocol=protocol, out=out, confusion=confusion
        )
        return per_class_lib.render(table, fmt), written
    check_layout(layout, protocol=protocol, baseline=baseline)
    if layout == "runs":
        if fmt not in ("markdown", "csv"):
            raise ConfigError(
                f"--format {fmt}: the runs layout prints markdown or csv; add --layout auto "
                f"for the paper table in {fmt}"
            )
        run_dirs = aggregate_lib.find_runs(paths, complete_only="below")
        table = choose_columns(results_table(run_dirs), eval_set, task, metric)
        text = to_markdown(table) if fmt == "markdown" else table.to_csv(index=False)
        return text, write_tables(table, out) if out is not None else []
    run_dirs = aggregate_lib.find_runs(paths)
    paper = aggregate_lib.aggregate(
        run_dirs, layout=layout, eval_set=eval_set, task=task, metric=metric, protocol=protocol
    )
    text = render_aggregate(paper, fmt, baseline=baseline)
    written = write_aggregate(paper, out, baseline=baseline) if out is not None else []
    return text, written


def export_submission(
    run: str | Path, path: str | Path, *, sls_pt: int, sls_tl: int, sls_td: int
) -> Path:
    """The EPIC-100 UDA challenge file of ``run`` (:func:`avda.scoring.protocols.
    export_run_submission`), checked against every target test segment of the run's cache
    (and its source test segments, for ``results_source``): one stored ``failed`` or
    ``missing`` has no prediction, and the file would lack it."""
    import logging

    from avda.cache import open_cache
    from avda.scoring import protocols

    run = Path(run)
    config = runs.read_config(run)
    expected: dict[str, list[str]] = {}
    reasons: dict[str, str] = {}
    try:
        store = open_cache(config["cache"])
    except Exception as error:  # noqa: BLE001 - the file is written, its completeness unchecked
        logging.getLogger(__name__).warning(
            "%s: its cache cannot be read (%s): the submission's completeness is not checked",
            *(run, error),
        )
    else:
        used = [m for m in config.get("modalities", store.modalities) if m in store.modalities]
        for side in ("target", "source"):
            expected[side] = _test_segments(store, config.get(side, []), used, reasons)
    return protocols.export_run_submission(
        run, path, sls_pt=sls_pt, sls_tl=sls_tl, sls_td=sls_td,
        target_test=expected.get("target"), source_test=expected.get("source"), reasons=reasons,
    )  # fmt: skip


def _test_segments(
    store: Any, domains: Sequence[str], modalities: Sequence[str], reasons: dict[str, str]
) -> list[str]:
    """The ids of the test segments of ``domains`` in the cache ``store``; why each one not
    stored ``done`` in one of ``modalities`` has no prediction goes into ``reasons``."""
    from avda.cache import Status

    segments = store.segments
    chosen = segments["domain"].isin(domains) & (segments["split"] == "test")
    rows = np.flatnonzero(chosen.to_numpy())
    for modality in modalities:
        statuses, errors = store.status(modality), store.errors(modality)
        for row in rows[statuses[rows] != int(Status.DONE)]:
            uid = str(segments["uid"].iloc[row])
            state = Status(int(statuses[row])).name.lower()
            reasons.setdefault(uid, f"{modality} {state}: {errors[row]}")
    return segments["uid"].astype(str).to_numpy()[rows].tolist()
