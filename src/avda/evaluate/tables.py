"""Results tables from run directories: one row per run, metrics per evaluation set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from avda import runs
from avda.errors import RunError
from avda.evaluate.metrics import mean_class_accuracy, top1_accuracy

SET_ORDER = ("source_val", "source_test", "target_val", "target_test")


def run_metrics(run: Path) -> dict[str, float]:
    """Metrics recomputed from a run's stored predictions (not trusted from its logs)."""
    metrics: dict[str, float] = {}
    config = runs.read_config(run)
    multi = {t["name"] for t in config.get("tasks", []) if t.get("multi_label")}
    for name in runs.prediction_sets(run):
        pred = runs.read_predictions(run, name)
        for task, scores in pred["scores"].items():
            labels = pred["labels"][task]
            if task in multi:
                from avda.evaluate.metrics import mean_average_precision

                metrics[f"{name}/{task}/mAP"] = mean_average_precision(scores, labels)
                continue
            known = labels >= 0
            if not known.any():
                continue
            metrics[f"{name}/{task}/top1"] = top1_accuracy(scores[known], labels[known])
            metrics[f"{name}/{task}/mca"] = mean_class_accuracy(scores[known], labels[known])
    return metrics


def results_table(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run: head, setting, seed, then ``<set>/<task>/<metric>`` columns (in %)."""
    rows = []
    for run in map(Path, run_dirs):
        if not runs.is_complete(run):
            raise RunError(
                f"{run} is not a complete run (no run.json with status complete); "
                "finish it with the same `avda train` command"
            )
        config = runs.read_config(run)
        row = {
            "run": run.name,
            "head": config["head"],
            "setting": f"{','.join(config['source'])}->{','.join(config['target'])}",
            "seed": config["seed"],
        }
        row.update({k: 100.0 * v for k, v in run_metrics(run).items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    fixed = ["run", "head", "setting", "seed"]
    order = sorted(
        (c for c in table.columns if c not in fixed),
        key=lambda c: (SET_ORDER.index(c.split("/")[0]) if c.split("/")[0] in SET_ORDER else 9, c),
    )
    return table[fixed + order]


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
                cells.append("" if np.isnan(value) else f"{value:.{digits}f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(table: pd.DataFrame, out: str | Path) -> list[Path]:
    """Write ``out.md`` and ``out.csv``; returns the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    markdown = out.with_suffix(".md")
    csv = out.with_suffix(".csv")
    markdown.write_text(to_markdown(table) + "\n")
    table.to_csv(csv, index=False, float_format="%.4f")
    return [markdown, csv]
