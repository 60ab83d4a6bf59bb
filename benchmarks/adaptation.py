"""Target accuracy of every adaptation head at its defaults against source-only, on shifted
feature sets of several families (``avda.cache.synthetic``), sizes and seeds.

For each (family, size, seed) a shifted cache is generated once into the work folder (reused
when present); every head then trains on it through the real loop (``avda.train.loop.train``,
the head's defaults: the recipe's number of optimiser steps at any data size) with source
``source`` and target ``target``, and is scored on ``target/test`` (top-1). A finished run is
reused when the benchmark is run again with the same work folder.

Printed (stdout): a markdown table, one row per head and one column per family/size, each cell
``mean ± std (difference to source-only)`` of target top-1 over seeds; a run that fails (a head
refusing the layout, a diverged loss) is a cell ``failed: <one line>``. Written to ``--out``:
``table.md``, ``summary.csv`` (one row per head x family x size), ``runs.csv`` (one row per run,
with its wall time and the machine load before and after it) and ``adaptation.png`` (grouped
bars per family, one panel per size, error bars: std over seeds).

    python benchmarks/adaptation.py --quick                     # a few minutes
    python benchmarks/adaptation.py --workers 2                 # everything (hours on a CPU)
    python benchmarks/adaptation.py --families scene audio-informative --sizes small \\
        --seeds 0 1 --workers 2
    python benchmarks/adaptation.py --heads mm-sada --families rotation \\
        --variant mm-sada+streams=mm-sada:stream_weight=1

Beside the heads, a reference row ``oracle`` (``--no-oracle`` leaves it out): a linear
classifier that is *given the target's training labels*, the supervised ceiling a method that
adapts without them is measured against (the "target-supervised" / "oracle" row of domain
adaptation tables). It is scikit-learn's logistic regression on each segment's clip-averaged
features (every modality, concatenated), each domain standardised with its own training set's
statistics, fitted on ``source/train`` and ``target/train`` with their labels (C chosen by
3-fold cross-validation on those, never on the test set) and scored on ``target/test``; seconds
per cache. It is not an upper bound on what a head can reach (a head's network is not linear),
only the accuracy a simple classifier gets when the labels the heads do without are there.

``--variant NAME=HEAD:KEY=VALUE,...`` adds a row ``NAME``: ``HEAD`` trained with those settings
(values parsed as YAML, as ``avda train --set``), so a candidate default is measured beside the
current one on the same caches and seeds. ``--device cuda`` trains on a GPU (default: avda's
choice, a GPU when there is one).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import datetime
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HEADS = (
    "source-only",
    "dann",
    "adabn",
    "mmd",
    "mm-sada",
    "ta3n",
    "rna",
    "cia",
    "audio-adaptive",
)
BASELINE = "source-only"
ORACLE = "oracle"  # a reference row: a linear classifier given the target's training labels
# its inverse regularisation strengths, one chosen by 3-fold cross-validation
ORACLE_CS = (0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
# The families of avda.cache.synthetic, and "prototype": benchmarks/prototype_shift.py, the
# independent generator (25 x 1024 per modality, the EPIC-100-like layout).
FAMILIES = ("scene", "affine", "rotation", "label-prior", "audio-informative", "prototype")
# small: the generator's defaults (480 / 480 / 320 segments, 5 snippets x 256 features);
# large: 4x the segments of every split.
SIZES: dict[str, dict[str, int]] = {
    "small": {},
    "large": {"source_train": 1920, "target_train": 1920, "target_test": 1280, "source_test": 640},
}
QUICK = {
    "families": ["scene", "affine"],
    "sizes": ["small"],
    "seeds": [0, 1],
    "heads": ["source-only", "dann", "adabn", "mmd"],
}
# Rough relative cost (minutes of one CPU thread on the small size), to start the longest runs
# first so that parallel workers finish together.
COST = {"audio-adaptive": 6, "mm-sada": 3, "ta3n": 2, "cia": 2, "rna": 1}
METRIC = "target_test/verb/top1"
RESULT = "benchmark.json"  # in each run folder: the record of the run that finished it


@dataclasses.dataclass(frozen=True)
class Job:
    head: str
    family: str
    size: str
    seed: int
    cache: str
    run: str
    name: str = ""  # the row: the head, or a variant's name
    overrides: str = "{}"  # JSON: the variant's settings
    device: str | None = None


def parse_variant(text: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME=HEAD:KEY=VALUE,KEY=VALUE`` -> ``(name, head, overrides)``."""
    import yaml

    name, sep, spec = text.partition("=")
    head, sep2, settings = spec.partition(":")
    if not sep or not name or head not in HEADS:
        raise SystemExit(
            f"--variant {text!r}: expected NAME=HEAD:KEY=VALUE,... with HEAD one of {HEADS}"
        )
    items, depth, current = [], 0, ""
    for char in settings if sep2 else "":  # commas inside [...] or {...} belong to the value
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    overrides: dict[str, Any] = {}
    for item in filter(None, (i.strip() for i in items)):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"--variant {text!r}: {item!r} is not KEY=VALUE")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or type(error).__name__
            raise SystemExit(f"--variant {text!r}: {value!r} is not a value ({problem})") from None
    return name, head, overrides


def _one_line(error: BaseException, limit: int = 160) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def cache_path(work: Path, family: str, size: str, seed: int) -> Path:
    return work / "caches" / f"{family}-{size}-seed{seed}.zarr"


def ensure_cache(work: Path, family: str, size: str, seed: int) -> Path:
    """The shifted cache of (family, size, seed), generated once (atomically) and reused."""
    from avda.cache import synthetic

    path = cache_path(work, family, size, seed)
    if (path / "zarr.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if family == "prototype":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from prototype_shift import make

        scale = 4 if size == "large" else 1
        make(str(partial), seed=seed, sizes=tuple(n * scale for n in (480, 480, 320, 160)))
    else:
        synthetic.generate(partial, family=family, seed=seed, **SIZES[size])
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    return path


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")


def _defaults(head: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The head's config (defaults and a variant's settings) as JSON values: a stored run is
    reused only at these."""
    from avda.train import heads

    config = heads.config_class(head).from_dict(dict(overrides or {}))
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def run_job(job: Job) -> dict[str, Any]:
    """Train one head on one cache (or fit the ``oracle`` row's classifier: no run folder); a
    failure is returned as a record, never raised."""
    from avda import runs
    from avda.train.loop import train

    if job.head == ORACLE:
        try:
            return oracle_record(job.cache, job.family, job.size, job.seed)
        except Exception as error:  # a result of the benchmark, as a failed run
            return {
                **{k: getattr(job, k) for k in ("family", "size", "seed")},
                "head": ORACLE,
                "status": "failed",
                "target_top1": math.nan,
                "target_mca": math.nan,
                "error": _one_line(error),
                "wall_s": math.nan,
            }
    overrides = json.loads(job.overrides)
    record: dict[str, Any] = {
        "head": job.name or job.head,
        "family": job.family,
        "size": job.size,
        "seed": job.seed,
    }
    run = Path(job.run)
    saved = run / RESULT
    defaults = _defaults(job.head, overrides)
    if saved.exists() and runs.is_complete(run):
        previous = json.loads(saved.read_text())
        if previous.get("status") == "ok" and previous.get("defaults") == defaults:
            return {**previous, "reused": True}
        # trained at other defaults (a head changed since): train again
        shutil.rmtree(run)
    load_before = _load()
    began = time.perf_counter()
    try:
        result = train(
            cache=job.cache,
            head=job.head,
            source=["source"],
            target=["target"],
            out=run,
            seed=job.seed,
            overrides=overrides,
            device=job.device,
            progress=False,
        )
        metrics = result.metrics
        epochs = runs.read_config(run)["head_config"].get("epochs")
        record.update(
            status="ok",
            target_top1=metrics.get(METRIC, math.nan),
            target_mca=metrics.get("target_test/verb/mca", math.nan),
            source_top1=metrics.get("source_test/verb/top1", math.nan),
            epochs=epochs,
            error="",
        )
    except Exception as error:  # a failed run is a result of the benchmark
        record.update(
            status="failed",
            target_top1=math.nan,
            target_mca=math.nan,
            source_top1=math.nan,
            epochs=None,
            error=_one_line(error),
        )
    record.update(
        wall_s=round(time.perf_counter() - began, 1),
        load1_before=load_before,
        load1_after=_load(),
        finished=datetime.datetime.now().isoformat(timespec="seconds"),
        run=str(run),
        reused=False,
        defaults=defaults,
    )
    if record["status"] == "ok":
        (run / RESULT).write_text(json.dumps(record, indent=2))
    return record


def oracle_record(cache: str | Path, family: str, size: str, seed: int) -> dict[str, Any]:
    """The ``oracle`` row's record on one cache: logistic regression on the clip-averaged
    features of every modality (each domain standardised with its training set's statistics),
    fitted on both domains' training sets *with their labels*, C by 3-fold cross-validation on
    them; target top-1 and mean class accuracy on ``target/test``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from avda.cache.store import open_cache

    began = time.perf_counter()
    store = open_cache(cache)
    segments = store.segments
    labels = segments["verb_class"].to_numpy(dtype=np.int64)
    domain, split = segments["domain"].astype(str), segments["split"].astype(str)
    train = (split == "train").to_numpy()
    test = ((domain == "target") & (split == "test")).to_numpy()
    columns = []
    for modality in sorted(store.modalities):
        x = store.load(modality).mean(axis=1, dtype=np.float64)
        for name in ("source", "target"):
            rows = (domain == name).to_numpy()
            fit = rows & train
            x[rows] = (x[rows] - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
        columns.append(x)
    features = np.concatenate(columns, axis=1)
    x, y = features[train], labels[train]
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    scores = [
        cross_val_score(LogisticRegression(C=c, max_iter=3000), x, y, cv=folds).mean()
        for c in ORACLE_CS
    ]
    chosen = ORACLE_CS[int(np.argmax(scores))]
    predicted = LogisticRegression(C=chosen, max_iter=3000).fit(x, y).predict(features[test])
    return {
        "head": ORACLE,
        "family": family,
        "size": size,
        "seed": seed,
        "status": "ok",
        "target_top1": float(np.mean(predicted == labels[test])),
        "target_mca": float(balanced_accuracy_score(labels[test], predicted)),
        "source_top1": math.nan,
        "epochs": None,
        "error": "",
        "wall_s": round(time.perf_counter() - began, 1),
        "C": chosen,
        "reused": False,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, std


def summarise(records: pd.DataFrame, heads: list[str]) -> pd.DataFrame:
    """One row per head x family x size: mean and std over the seeds that finished."""
    rows = []
    for (family, size), group in records.groupby(["family", "size"], sort=False):
        baseline = group[(group["head"] == BASELINE) & (group["status"] == "ok")]
        base_mean = float(baseline["target_top1"].mean()) if len(baseline) else math.nan
        for head in heads:
            mine = group[group["head"] == head]
            if mine.empty:
                continue
            ok = mine[mine["status"] == "ok"]
            failed = mine[mine["status"] != "ok"]
            mean, std = _mean_std(list(ok["target_top1"])) if len(ok) else (math.nan, math.nan)
            # the difference on the seeds both finished
            seeds = set(ok["seed"]) & set(baseline["seed"])
            difference = math.nan
            if seeds and head != BASELINE:
                difference = float(
                    ok[ok["seed"].isin(seeds)]["target_top1"].mean()
                    - baseline[baseline["seed"].isin(seeds)]["target_top1"].mean()
                )
            rows.append(
                {
                    "head": head,
                    "family": family,
                    "size": size,
                    "seeds": len(mine),
                    "finished": len(ok),
                    "target_top1_mean": mean,
                    "target_top1_std": std,
                    "source_only_mean": base_mean,
                    "difference": difference,
                    "wall_s_mean": float(ok["wall_s"].mean()) if len(ok) else math.nan,
                    "error": failed["error"].iloc[0] if len(failed) else "",
                }
            )
    return pd.DataFrame(rows)


def cell(row: pd.Series) -> str:
    if row["finished"] == 0:
        return f"failed: {row['error']}"
    text = f"{row['target_top1_mean']:.3f} ± {row['target_top1_std']:.3f}"
    if not math.isnan(row["difference"]):
        text += f" ({row['difference']:+.3f})"
    if row["finished"] < row["seeds"]:
        text += f" [{row['finished']}/{row['seeds']} seeds; failed: {row['error']}]"
    return text


def markdown_table(summary: pd.DataFrame, heads: list[str], columns: list[str]) -> str:
    lines = ["| head | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for head in heads:
        mine = summary[summary["head"] == head]
        if mine.empty:
            continue
        cells = []
        for column in columns:
            family, size = column.split("/")
            match = mine[(mine["family"] == family) & (mine["size"] == size)]
            cells.append(cell(match.iloc[0]).replace("|", "\\|") if len(match) else "")
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(summary: pd.DataFrame, heads: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s for s in SIZES if s in set(summary["size"])]
    families = [f for f in FAMILIES if f in set(summary["family"])]
    heads = [h for h in heads if h in set(summary["head"])]
    fig, axes = plt.subplots(
        len(sizes),
        1,
        figsize=(max(6.0, 1.6 * len(families) * max(1, len(heads)) / 4), 4.0 * len(sizes)),
        squeeze=False,
    )
    width = 0.8 / max(1, len(heads))
    colours = plt.get_cmap("tab10")
    for ax, size in zip(axes[:, 0], sizes, strict=True):
        for i, head in enumerate(heads):
            means, stds = [], []
            for family in families:
                match = summary[
                    (summary["head"] == head)
                    & (summary["family"] == family)
                    & (summary["size"] == size)
                ]
                means.append(match["target_top1_mean"].iloc[0] if len(match) else math.nan)
                stds.append(match["target_top1_std"].iloc[0] if len(match) else math.nan)
            x = np.arange(len(families)) + (i - (len(heads) - 1) / 2) * width
            ax.bar(
                x,
                np.nan_to_num(means),
                width,
                yerr=np.nan_to_num(stds),
                capsize=2,
                label=head,
                color=colours(i % 10),
                hatch="//" if head == BASELINE else None,
                edgecolor="black" if head == BASELINE else None,
                linewidth=0.5,
            )
        ax.set_xticks(np.arange(len(families)), families)
        ax.set_ylabel("target top-1")
        ax.set_ylim(0, 1)
        ax.set_title(f"size {size} (mean ± std over seeds; missing bar: failed or not run)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"a few minutes: {QUICK}")
    parser.add_argument("--heads", nargs="+", choices=HEADS, default=None, help="default: all")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=None)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2")
    parser.add_argument("--workers", type=int, default=1, help="trainings in parallel processes")
    default_work = Path(tempfile.gettempdir()) / "avda-adaptation"
    parser.add_argument(
        "--work", type=Path, default=default_work, help="caches and runs (reused when present)"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: WORK/results")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=HEAD:KEY=VALUE,...",
        help="an extra row: HEAD with these settings (repeatable)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: avda's choice)")
    parser.add_argument(
        "--no-oracle",
        dest="oracle",
        action="store_false",
        help=f"leave out the {ORACLE!r} row (a linear classifier given the target's labels)",
    )
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]

    quick = QUICK if args.quick else {}
    heads = args.heads or quick.get("heads") or list(HEADS)
    if BASELINE not in heads:
        heads = [BASELINE, *heads]  # every head is compared with source-only
    heads = [h for h in HEADS if h in heads]
    rows = heads + [name for name, _, _ in variants] + ([ORACLE] if args.oracle else [])
    families = args.families or quick.get("families") or list(FAMILIES)
    families = [f for f in FAMILIES if f in families]
    sizes = [s for s in SIZES if s in (args.sizes or quick.get("sizes") or list(SIZES))]
    seeds = args.seeds if args.seeds is not None else quick.get("seeds", [0, 1, 2])
    work = args.work.resolve()
    out = (args.out or work / "results").resolve()
    out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    began = time.perf_counter()
    jobs = []
    combos = [(f, s, seed) for s in sizes for f in families for seed in seeds]
    for family, size, seed in tqdm(combos, desc="caches", file=sys.stderr, leave=False):
        cache = ensure_cache(work, family, size, seed)
        oracle = [(ORACLE, ORACLE, {})] if args.oracle else []  # seconds a cache, no run folder
        for name, head, overrides in [(h, h, {}) for h in heads] + variants + oracle:
            run = work / "runs" / f"{family}-{size}" / f"{name}-seed{seed}"
            jobs.append(
                Job(
                    head,
                    family,
                    size,
                    seed,
                    str(cache),
                    str(run),
                    name=name,
                    overrides=json.dumps(overrides),
                    device=args.device,
                )
            )
    # the longest first: parallel workers then finish together
    jobs.sort(key=lambda j: -COST.get(j.head, 0.5) * (4 if j.size == "large" else 1))

    records: list[dict[str, Any]] = []
    columns = ["head", "family", "size", "seed", "status", "target_top1", "target_mca"]

    def save() -> None:
        frame = pd.DataFrame(records)
        frame = frame[columns + [c for c in frame.columns if c not in columns]]
        frame.sort_values(["size", "family", "head", "seed"]).to_csv(out / "runs.csv", index=False)

    bar = tqdm(total=len(jobs), desc="runs", unit="run", file=sys.stderr)

    def done(record: dict[str, Any]) -> None:
        records.append(record)
        save()
        bar.update()
        score = f"{record['target_top1']:.3f}" if record["status"] == "ok" else record["status"]
        bar.set_postfix_str(
            f"{record['head']} {record['family']}/{record['size']} s{record['seed']}: "
            f"{score} in {record['wall_s']:.0f}s"
        )

    if args.workers <= 1:
        _init_worker()
        for job in jobs:
            done(run_job(job))
    else:
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(
            args.workers, mp_context=context, initializer=_init_worker
        ) as pool:
            pending = {pool.submit(run_job, job): job for job in jobs}
            try:
                for future in futures.as_completed(pending):
                    job = pending[future]
                    try:
                        done(future.result())
                    except Exception as error:  # the worker process itself died
                        done(
                            {
                                **dataclasses.asdict(job),
                                "head": job.name or job.head,
                                "status": "failed",
                                "target_top1": math.nan,
                                "target_mca": math.nan,
                                "error": _one_line(error),
                                "wall_s": math.nan,
                            }
                        )
            except KeyboardInterrupt:
                for future in pending:
                    future.cancel()
                raise
    bar.close()

    frame = pd.DataFrame(records)
    summary = summarise(frame, rows)
    summary.to_csv(out / "summary.csv", index=False)
    table_columns = [f"{f}/{s}" for s in sizes for f in families]
    table = markdown_table(summary, rows, table_columns)
    wall = time.perf_counter() - began
    load = os.getloadavg()
    header = (
        f"target top-1 (mean ± std over seeds {' '.join(map(str, seeds))}; in brackets: the "
        f"difference to source-only); {datetime.date.today().isoformat()}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{args.workers} worker(s) x 1 torch thread, load {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at the end, {wall / 60:.1f} min"
    )
    reused = int(frame.get("reused", pd.Series(dtype=bool)).fillna(False).astype(bool).sum())
    if reused:
        header += f" ({reused} of {len(frame)} runs reused from an earlier invocation)"
    timing = (
        frame[frame["status"] == "ok"]
        .groupby(["head", "size"])["wall_s"]
        .agg(["mean", "min", "max", "count"])
        .round(1)
    )
    (out / "table.md").write_text(
        f"{header}\n\n{table}\n\nwall seconds per run:\n\n{timing.to_markdown()}\n"
        if _has_tabulate()
        else f"{header}\n\n{table}\n\nwall seconds per run:\n\n{timing.to_string()}\n"
    )
    figure(summary, rows, out / "adaptation.png")
    print(header)
    print()
    print(table)
    print()
    print("wall seconds per run (mean, min, max, runs):")
    print(timing.to_string())
    print(f"\nwritten: {out}/{{table.md,summary.csv,runs.csv,adaptation.png}}", file=sys.stderr)
    return summary


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
