"""``avda report RUNS... -o report.html``: one static, self-contained HTML page about many runs.

Everything is inside the file (PNG figures as base64 ``data:`` URIs, inline CSS, no script), so
the page can be mailed or attached to an issue. It holds:

* the results table in the paper layout (:mod:`avda.evaluate.aggregate`) and one row per run;
* per task, the per-class table (:mod:`avda.evaluate.per_class`): per setting, class and
  method the target accuracy (AP for a multi-label task) as mean ± std over seeds, with the
  class names and their segments, its ``Mean`` row the mean class accuracy;
* across seeds, when some method and setting were trained with several seeds (a sweep): per
  method and setting the mean ± std over seeds of every metric, and the target accuracy per
  epoch as mean ± std bands;
* per run: training curves from ``metrics.jsonl`` (losses; source/target accuracy or mAP per
  epoch; the domain discriminator's loss/accuracy and the GRL coefficient when logged),
  per-class target accuracy (AP for multi-label tasks), confusion matrices (counts in the
  cells), both of the predictions its protocol's table scores (the per-class table's), a
  2-D embedding of source vs target features *before* (the cache's clip-averaged features)
  and *after* adaptation (the head's embedding ``HeadOutput.features``, from
  ``checkpoints/last.pt``), coloured by domain and by class: PCA, and t-SNE when there are few
  points. When the cache is gone or the head cannot be rebuilt, "after" embeds the stored
  prediction scores instead, and the caption says so;
* audio clusters (Audio-Adaptive), once per cache and source domains, when the runs' cache
  holds ``clusters/<modality>`` made by ``avda cluster`` for them: the cluster sizes per class
  and the Elbow curves (k-means inertia per k, the chosen k circled) stored with them.

Classes are named wherever the cache's segments name them (the manifest's ``verb``/``noun``
columns next to ``verb_class``/``noun_class``); otherwise by id.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError:  # the [report] extra is not installed
    from avda.optional import require

    require("matplotlib", package="matplotlib", extra="report", feature="avda report")
    raise

import avda
from avda import runs
from avda._io import atomic_write_text, check_writable
from avda.errors import AvdaError, ConfigError, RunError
from avda.evaluate import aggregate as aggregate_lib
from avda.evaluate import tables
from avda.evaluate.classes import (  # noqa: F401 - the report's names, kept importable here
    NAME_COLUMNS,
    cache_class_names,
    class_label,
    class_names,
)
from avda.paths import check_output_file
from avda.scoring.metrics import mean_std

log = logging.getLogger(__name__)

SOURCE_COLOR = "#1f77b4"
TARGET_COLOR = "#ff7f0e"
DOMAIN_KEYS = ("adversarial", "domain", "discriminator", "grl")
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, caption { text-align: left; }
caption { font-style: italic; margin-bottom: 0.4em; }
table.results { min-width: min(100%, 40em); }
table.per-class td.name { text-align: left; }
table.per-class tr.mean td { border-top: 2px solid #999; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; } .note { color: #a33; }
"""


@dataclasses.dataclass(frozen=True)
class ReportFigure:
    """One PNG of the page (base64) with its title (the image's alt text) and caption."""

    title: str
    png: str  # base64
    caption: str = ""


def _encode(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------ curves
def curves_figure(records: list[dict[str, Any]]) -> ReportFigure | None:
    """Losses, accuracies and domain-discriminator values per epoch (from ``metrics.jsonl``)."""
    if not records:
        return None
    keys = sorted({k for r in records for k in r if isinstance(r.get(k), int | float)})
    domain = [k for k in keys if k.startswith("train/") and any(d in k for d in DOMAIN_KEYS)]
    losses = [k for k in keys if k.startswith("train/") and k not in domain]
    scores = [
        k for k in keys if k.startswith(("source_", "target_")) and k.endswith(("/top1", "/mAP"))
    ]
    # a multi-label task's curve is its mAP: the panel said "accuracy (%)" of CharadesEgo's
    metrics = [
        m
        for end, m in (("/top1", "accuracy"), ("/mAP", "mAP"))
        if any(k.endswith(end) for k in scores)
    ]
    panels = [
        (p, t) for p, t in ((losses, "training losses"), (scores, f"{', '.join(metrics)} (%)")) if p
    ]
    if domain:
        panels.append((domain, "domain discriminator"))
    if not panels:
        return None
    figure = Figure(figsize=(4.2 * len(panels), 3.2))
    # one marker per task: verb and noun of one set share its colour and line style
    tasks = sorted({k.split("/")[1] for k in scores if k.count("/") >= 2})
    markers = {task: "o.s^vxd+"[i % 8] for i, task in enumerate(tasks)}
    for index, (names, title) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        for name in names:
            points = [(r["epoch"], r[name]) for r in records if name in r and "epoch" in r]
            if not points:
                continue
            epochs, values = zip(*points, strict=True)
            scale = 100.0 if names is scores else 1.0
            color = TARGET_COLOR if name.startswith("target_") else None
            color = SOURCE_COLOR if name.startswith("source_") else color
            style = "--" if "grl" in name or "_val/" in name else "-"
            parts = name.split("/")
            marker = markers.get(parts[1], ".") if len(parts) >= 3 else "."
            axes.plot(
                epochs, [scale * v for v in values], style, color=color, marker=marker, label=name
            )
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    caption = "per epoch, from metrics.jsonl: " + ", ".join(title for _, title in panels)
    return ReportFigure("training curves", _encode(figure), caption)


# ------------------------------------------------------------------------------ class names
MAX_CONFUSION_CLASSES = 30  # more classes: the most frequent true classes only (readable cells)


def _tick_labels(axes, positions, labels, axis: str = "x", fontsize: float = 7) -> None:
    long = max((len(label) for label in labels), default=0) > 3
    if axis == "x":
        axes.set_xticks(positions, labels, fontsize=fontsize, rotation=60 if long else 0,
                        ha="right" if long else "center", rotation_mode="anchor")  # fmt: skip
    else:
        axes.set_yticks(positions, labels, fontsize=fontsize)


# ------------------------------------------------------------------------------ predictions
def _target_set(run: Path) -> str | None:
    """The target set the figures score: target_test when it is labelled, else target_val
    (EPIC-100's target_test has no labels), as the tables choose (``--set auto``)."""
    try:
        return aggregate_lib.choose_set(run, "auto")
    except RunError:  # no target predictions
        return None


def per_class_plot(
    values: np.ndarray,
    task: str,
    multi_label: bool,
    split: str,
    names: Sequence[str] | None = None,
    *,
    shows: str = "",
) -> tuple[Figure, str, str]:
    """The per-class figure of ``values`` (``(C,)`` fractions, NaN for a class without an
    example: :func:`avda.evaluate.per_class.run_classes`), its title and caption (what the
    values are of, ``shows``, and the weakest classes named)."""
    what = "AP" if multi_label else "accuracy"
    classes = np.flatnonzero(~np.isnan(values))
    figure = Figure(figsize=(max(4.0, min(14.0, 0.3 * len(classes) + 2)), 3.2))
    axes = figure.add_subplot(1, 1, 1)
    axes.bar(np.arange(len(classes)), 100 * values[classes], color=TARGET_COLOR)
    if len(classes):
        axes.axhline(100 * np.nanmean(values), color="k", lw=1, ls="--", label="mean")
        axes.legend(fontsize=7)
    if len(classes) <= 40:
        _tick_labels(axes, np.arange(len(classes)), [class_label(names, c) for c in classes])
    axes.set_xlabel(f"{task} class")
    axes.set_ylabel(f"{what} (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"{split}: per-class {what}, {task}")
    figure.tight_layout()
    caption = (f"{shows}; " if shows else "") + f"classes without a {split} example are left out"
    if len(classes):
        weakest = classes[np.argsort(values[classes], kind="stable")[:3]]
        caption += "; lowest: " + ", ".join(
            f"{class_label(names, c)} {100 * values[c]:.0f}%" for c in weakest
        )
    return figure, f"per-class {what} ({task})", caption


def per_class_figure(
    values: np.ndarray,
    task: str,
    multi_label: bool,
    split: str,
    names: Sequence[str] | None = None,
    *,
    shows: str = "",
) -> ReportFigure:
    """Per-class accuracy (AP for multi-label tasks) as bars, the mean as a line."""
    figure, title, caption = per_class_plot(values, task, multi_label, split, names, shows=shows)
    return ReportFigure(title, _encode(figure), caption)


def confusion_plot(
    counts: np.ndarray,
    task: str,
    split: str,
    names: Sequence[str] | None = None,
    max_classes: int = MAX_CONFUSION_CLASSES,
    *,
    shows: str = "",
) -> tuple[Figure, str]:
    """The confusion figure of ``counts`` (``(C, C)``, row = true class; colour = row
    fraction, number = segments) of the classes that occur, at most ``max_classes`` (the most
    frequent true ones); and its caption, which says what the counts are of (``shows``) and
    names the most frequent confusions."""
    shown = np.flatnonzero(counts.sum(axis=1) + counts.sum(axis=0))
    note = ""
    if len(shown) > max_classes:
        frequent = np.argsort(-counts.sum(axis=1)[shown], kind="stable")[:max_classes]
        note = f"; the {max_classes} most frequent of {len(shown)} classes"
        shown = np.sort(shown[frequent])
    sub = counts[np.ix_(shown, shown)]
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(sub / counts[shown].sum(axis=1, keepdims=True))
    n = max(len(shown), 1)
    size = min(14.0, max(4.0, 2.2 + 0.38 * n))
    figure = Figure(figsize=(size + 1.2, size))
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of the true class")
    ticks = np.arange(len(shown))
    labels_text = [class_label(names, c) for c in shown]
    _tick_labels(axes, ticks, labels_text, "x")
    _tick_labels(axes, ticks, labels_text, "y")
    fontsize = float(np.clip(110 / n, 5, 9))
    for (row, column), count in np.ndenumerate(sub):
        if count:
            color = "white" if normalised[row, column] > 0.55 else "black"
            axes.text(column, row, str(count), ha="center", va="center", fontsize=fontsize,
                      color=color)  # fmt: skip
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{split}: confusion, {task}")
    figure.tight_layout()
    off = counts.copy()
    np.fill_diagonal(off, 0)
    pairs = [np.unravel_index(i, off.shape) for i in np.argsort(-off, axis=None, kind="stable")[:3]]
    confused = [
        f"{class_label(names, t)} → {class_label(names, p)} ({off[t, p]})"
        for t, p in pairs
        if off[t, p] > 0
    ]
    caption = "rows: true class (colour: fraction of the row); numbers: segments" + note
    if shows:
        caption = f"{shows}; {caption}"
    if confused:
        caption += "; most confused: " + ", ".join(confused)
    return figure, caption


def confusion_figure(
    counts: np.ndarray,
    task: str,
    split: str,
    names: Sequence[str] | None = None,
    *,
    shows: str = "",
) -> ReportFigure:
    """Row-normalised confusion matrix (row = true class), counts in the cells."""
    figure, caption = confusion_plot(counts, task, split, names, shows=shows)
    return ReportFigure(f"confusion matrix ({task})", _encode(figure), caption)


# ------------------------------------------------------------------------------ embeddings
@dataclasses.dataclass
class Embedding:
    """Points to project: ``before``/``after`` ``(n, F)`` arrays and ``is_target`` ``(n,)``;
    ``classes`` ``(n,)``: each point's class of ``task`` (-1 unknown), None without one."""

    before: np.ndarray | None
    after: np.ndarray
    is_target: np.ndarray
    after_is_scores: bool = False
    note: str = ""
    classes: np.ndarray | None = None
    task: str | None = None


# ``embed(run, max_points)`` -> an object with ``before``, ``after``, ``is_target``, ``classes``
# and ``task`` (:class:`avda.train.embedding.HeadEmbedding`)
Embed = Callable[[Path, int], Any]


def _sample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(rows, size=limit, replace=False)) if len(rows) > limit else rows


def score_embedding(run: Path, *, max_points: int = 500, seed: int = 0) -> Embedding:
    """Fallback: the stored prediction scores of the source and target evaluation sets."""
    rng = np.random.default_rng(seed)
    parts, sides, classes = [], [], []
    task = None
    for name in runs.prediction_sets(run):
        predictions = runs.read_predictions(run, name)
        tasks = sorted(predictions["scores"])
        scores = np.concatenate([predictions["scores"][t] for t in tasks], 1)
        parts.append(scores)
        sides.append(np.full(len(scores), name.startswith("target")))
        single = [t for t in tasks if np.asarray(predictions["labels"][t]).ndim == 1]
        task = task or (single[0] if single else None)
        labels = predictions["labels"].get(task) if task else None
        classes.append(np.full(len(scores), -1) if labels is None else np.asarray(labels))
    if not parts:
        raise RunError(f"{run} has no predictions to embed")
    points, is_target = np.concatenate(parts), np.concatenate(sides)
    keep = _sample(np.arange(len(points)), max_points, rng)
    labels = np.concatenate(classes).astype(np.int64)[keep] if task else None
    return Embedding(
        None, points[keep], is_target[keep], after_is_scores=True, classes=labels, task=task
    )


def run_embedding(run: Path, *, max_points: int = 500, embed: Embed | None = None) -> Embedding:
    """The head's embedding from ``embed`` (:func:`avda.train.embedding.head_embedding`, which
    the CLI passes: evaluation does not import training), else the stored prediction scores."""
    if embed is None:
        return score_embedding(run, max_points=max_points)
    try:
        found = embed(run, max_points)
        return Embedding(
            found.before, found.after, found.is_target, classes=found.classes, task=found.task
        )
    except runs.CheckpointRefused:
        raise  # a crafted or damaged checkpoint is refused, not worked around (issue 18)
    except (AvdaError, OSError, KeyError, RuntimeError) as error:
        log.warning(
            "%s: cannot rebuild the head's embedding (%s); the report shows an embedding of its "
            "prediction scores instead",
            *(run, error),
        )
        embedding = score_embedding(run, max_points=max_points)
        embedding.note = f"the head's embedding could not be rebuilt ({error}): "
        return embedding


def _project(points: np.ndarray, method: str) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    points = np.asarray(points, dtype=np.float64)
    if method == "PCA":
        components = min(2, points.shape[1], len(points))
        projected = PCA(n_components=components, random_state=0).fit_transform(points)
        return np.pad(projected, ((0, 0), (0, 2 - components)))
    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500, random_state=0)
    # One OpenMP thread: on a few hundred points the threads' synchronisation costs more than it
    # saves (6x slower on a busy 2-core machine).
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(points)


def _class_colors(count: int):
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](i / max(count - 1, 1)) for i in range(count)]


def embedding_plot(
    embedding: Embedding, *, tsne_max_points: int = 800, names: Sequence[str] | None = None
) -> tuple[Figure, list[str]]:
    """The embedding figure and the titles of its panels: per projection (PCA, and t-SNE when
    small) and per feature space (before, after), one panel coloured by domain and one by
    class (source dots, target triangles) when the points have classes."""
    methods = ["PCA"] + (["t-SNE"] if 5 <= len(embedding.after) <= tsne_max_points else [])
    spaces = [("before (cache features)", embedding.before)] if embedding.before is not None else []
    after_name = (
        "after (prediction scores)" if embedding.after_is_scores else "after (head embedding)"
    )
    spaces.append((after_name, embedding.after))
    classes = embedding.classes
    by_class = classes is not None and bool((classes >= 0).any())
    colourings = ["domain", "class"] if by_class else ["domain"]
    columns = [(name, points, colour) for name, points in spaces for colour in colourings]
    figure = Figure(figsize=(3.4 * len(columns), 3.3 * len(methods)))
    titles = []
    class_ids = np.unique(classes[classes >= 0]) if by_class else np.zeros(0, np.int64)
    colors = dict(zip(class_ids.tolist(), _class_colors(len(class_ids)), strict=True))
    for row, method in enumerate(methods):
        projected_of: dict[str, np.ndarray] = {}
        for column, (name, points, colour) in enumerate(columns):
            axes = figure.add_subplot(len(methods), len(columns), row * len(columns) + column + 1)
            if name not in projected_of:
                projected_of[name] = _project(points, method)
            projected = projected_of[name]
            if colour == "domain":
                for is_target, color, label in (
                    (False, SOURCE_COLOR, "source"),
                    (True, TARGET_COLOR, "target"),
                ):
                    mask = embedding.is_target == is_target
                    axes.scatter(*projected[mask].T, s=6, alpha=0.6, color=color, label=label)
            else:
                unknown = classes < 0
                if unknown.any():
                    axes.scatter(*projected[unknown].T, s=5, alpha=0.3, color="#bbbbbb")
                for class_id in class_ids:
                    for is_target, marker in ((False, "o"), (True, "^")):
                        mask = (classes == class_id) & (embedding.is_target == is_target)
                        if mask.any():
                            axes.scatter(
                                *projected[mask].T, s=7, alpha=0.7, marker=marker,
                                color=colors[int(class_id)],
                                label=class_label(names, class_id) if not is_target else None,
                            )  # fmt: skip
            title = f"{method}: {name}, by {colour}"
            titles.append(title)
            axes.set_title(title, fontsize=8)
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0 and (column == 0 or (colour == "class" and column == 1)):
                labelled = axes.get_legend_handles_labels()[0]  # none: a target-only run
                if labelled and (colour == "domain" or len(class_ids) <= 12):
                    axes.legend(fontsize=6, markerscale=2, loc="best")
    figure.tight_layout()
    return figure, titles


def embedding_figure(
    embedding: Embedding, *, tsne_max_points: int = 800, names: Sequence[str] | None = None
) -> ReportFigure:
    """PCA (and t-SNE when small) of source vs target, before and after adaptation, coloured
    by domain and by class."""
    figure, _ = embedding_plot(embedding, tsne_max_points=tsne_max_points, names=names)
    caption = embedding.note + (
        "source vs target prediction scores (no cache features here)"
        if embedding.after_is_scores
        else "source vs target segments: clip-averaged cache features and the head's embedding"
    )
    if embedding.classes is not None and (embedding.classes >= 0).any():
        caption += f"; by class: {embedding.task} (source dots, target triangles)"
    return ReportFigure("embedding", _encode(figure), f"{caption}; {len(embedding.after)} points")


# ------------------------------------------------------------------------------ clusters
def cluster_info(run: Path) -> list[dict[str, Any]]:
    """Audio clusters the run's cache holds for the run's source domains (``avda cluster``).

    One entry per clustered modality: cluster ids and classes of the group's segments, and per
    class the candidate k, their inertia and the k chosen by the Elbow.
    """
    from avda.cache import open_cache
    from avda.cache.schema import TASK_COLUMNS

    config = runs.read_config(run)
    try:
        store = open_cache(config["cache"])
    except AvdaError:
        return []
    wanted = ",".join(sorted(config["source"]))
    found = []
    for modality in store.modalities:
        stored = store.read_clusters(modality)
        if stored is None:
            continue
        ids, info = stored
        groups = info.get("groups", {})
        group = groups.get(wanted)
        if group is None:
            continue
        task = group.get("settings", {}).get("task", "verb")
        column = TASK_COLUMNS.get(task)
        if column not in store.segments:
            continue
        rows = np.asarray(group.get("rows", []), dtype=np.int64)
        classes = store.segments[column].iloc[rows].fillna(-1).astype("int64").to_numpy()
        found.append(
            {
                "cache": str(Path(config["cache"]).resolve()),
                "modality": modality,
                "domains": wanted,
                "task": task,
                "ids": ids[rows],
                "classes": classes,
                "curves": group.get("classes", {}),
            }
        )
    return found


def cluster_figures(
    entry: dict[str, Any], names: Sequence[str] | None = None
) -> list[ReportFigure]:
    """Cluster sizes per class (stacked bars) and the Elbow curves with the chosen k."""
    ids, classes, curves = entry["ids"], entry["classes"], entry["curves"]
    where = f"{entry['modality']}, source {entry['domains']}"
    keep = (ids >= 0) & (classes >= 0)
    figures = []
    if keep.any():
        class_ids = np.unique(classes[keep])
        num_clusters = int(ids[keep].max()) + 1
        counts = np.zeros((len(class_ids), num_clusters), dtype=np.int64)
        for row, class_id in enumerate(class_ids):
            counts[row] = np.bincount(ids[keep & (classes == class_id)], minlength=num_clusters)
        figure = Figure(figsize=(max(4.0, min(14.0, 0.4 * len(class_ids) + 2)), 3.0))
        axes = figure.add_subplot(1, 1, 1)
        bottom = np.zeros(len(class_ids))
        for cluster in range(num_clusters):
            axes.bar(
                np.arange(len(class_ids)), counts[:, cluster], bottom=bottom, label=str(cluster)
            )
            bottom += counts[:, cluster]
        _tick_labels(axes, np.arange(len(class_ids)), [class_label(names, c) for c in class_ids])
        axes.set_xlabel(f"{entry['task']} class")
        axes.set_ylabel("segments")
        axes.set_title(f"audio clusters per class ({where})")
        if num_clusters <= 12:
            axes.legend(title="cluster", fontsize=6, title_fontsize=7)
        figure.tight_layout()
        figures.append(ReportFigure(f"cluster sizes ({entry['modality']})", _encode(figure)))
    if curves:
        figure = Figure(figsize=(4.8, 3.3))
        axes = figure.add_subplot(1, 1, 1)
        for class_id, curve in sorted(curves.items(), key=lambda item: int(item[0])):
            ks = np.asarray(curve.get("candidate_clusters", []))
            inertias = np.asarray(curve.get("inertias", []), dtype=np.float64)
            if len(ks) == 0 or len(ks) != len(inertias):
                continue
            (line,) = axes.plot(ks, inertias, marker=".", label=class_label(names, class_id))
            chosen = curve.get("n_clusters")
            if chosen in ks.tolist():
                point = inertias[ks.tolist().index(chosen)]
                axes.plot([chosen], [point], "o", color=line.get_color(), ms=9, mfc="none")
        axes.set_xlabel("k (clusters)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("k-means inertia")
        axes.set_title(f"Elbow curves ({where})")
        if len(curves) <= 12:
            axes.legend(fontsize=6)
        figure.tight_layout()
        caption = "circles: the k the Elbow chose per class"
        figures.append(
            ReportFigure(f"Elbow curves ({entry['modality']})", _encode(figure), caption)
        )
    return figures


# ------------------------------------------------------------------------------ seeds
def seed_groups(
    infos: Sequence[aggregate_lib.RunInfo], *, warn: bool = False
) -> dict[tuple[str, str], list[int]]:
    """Positions of the runs of each (method, setting), in the order they first appear, one
    run per seed (a copied run's repeat is left out, as ``avda evaluate`` refuses to count a
    seed twice). A method trained under several protocols is one group per protocol, named
    ``method [protocol]``: their numbers follow other recipes (the sum of a ``source-only``
    head and a protocol's ``source-only`` role, a ta3n run, was averaged as two seeds)."""
    protocols: dict[str, set] = {}
    for info in infos:
        protocols.setdefault(info.method, set()).add(info.protocol)
    groups: dict[tuple[str, str], list[int]] = {}
    seen: set[tuple[str, str, int]] = set()
    for position, info in enumerate(infos):
        label = info.method
        if len(protocols[info.method]) > 1:
            label = f"{info.method} [{info.protocol or 'no protocol'}]"
        if (label, info.setting, info.seed) in seen:
            if not warn:
                continue
            log.warning(
                "%s repeats seed %d of %s on %s: left out of the table across seeds",
                *(info.path, info.seed, label, info.setting),
            )
            continue
        seen.add((label, info.setting, info.seed))
        groups.setdefault((label, info.setting), []).append(position)
    return groups


def seeds_table(infos: Sequence[aggregate_lib.RunInfo], per_run) -> Any:
    """Per method and setting: the seeds and, per metric column of ``per_run`` (one row per
    run, in the order of ``infos``), ``mean ± std`` over the seeds (sample std)."""
    import pandas as pd

    metrics = [c for c in per_run.columns if c.count("/") == 2]  # <set>/<task>/<metric>
    rows = []
    for (method, setting), positions in seed_groups(infos).items():
        row = {
            "method": method,
            "setting": setting,
            "seeds": ", ".join(str(infos[p].seed) for p in positions),
        }
        for column in metrics:
            values = per_run[column].iloc[positions].to_numpy(dtype=np.float64)
            values = values[~np.isnan(values)]
            if len(values):
                mean, std = mean_std(values)
                row[column] = tables.format_mean_std_cell(mean, std)
            else:
                row[column] = "-"
        rows.append(row)
    return pd.DataFrame(rows)


def _main_metric(records: list[dict[str, Any]]) -> str | None:
    """The target metric the across-seeds curves show: EPIC-100's action top-1 for a run with
    verb and noun, else the first top-1 (mAP for a multi-label task) in name order."""
    keys = {k for r in records for k in r}
    for prefix in ("target_test/", "target_val/"):
        if f"{prefix}action/top1" in keys:
            return f"{prefix}action/top1"
        found = sorted(k for k in keys if k.startswith(prefix) and k.endswith(("/top1", "/mAP")))
        if found:
            return found[0]
    return None


def seed_curves_figure(infos: Sequence[aggregate_lib.RunInfo]) -> ReportFigure | None:
    """Per setting, the target accuracy per epoch of each method: mean line and ± std band
    over its seeds (metrics.jsonl)."""
    settings = list(dict.fromkeys(info.setting for info in infos))
    records = {info.path: runs.read_metrics(info.path) for info in infos}
    metric = next((m for m in map(_main_metric, records.values()) if m), None)
    if metric is None:
        return None
    figure = Figure(figsize=(4.4 * len(settings), 3.3))
    for index, setting in enumerate(settings, start=1):
        axes = figure.add_subplot(1, len(settings), index)
        for (method, group_setting), positions in seed_groups(infos).items():
            if group_setting != setting:
                continue
            by_epoch: dict[int, list[float]] = {}
            for position in positions:
                for record in records[infos[position].path]:
                    if metric in record and "epoch" in record:
                        by_epoch.setdefault(int(record["epoch"]), []).append(record[metric])
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            means = np.array([100 * np.mean(by_epoch[e]) for e in epochs])
            stds = np.array(
                [100 * np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
            )
            (line,) = axes.plot(epochs, means, marker=".", label=f"{method} ({len(positions)})")
            axes.fill_between(epochs, means - stds, means + stds, alpha=0.2, color=line.get_color())
        axes.set_title(setting, fontsize=9)
        axes.set_xlabel("epoch")
        axes.set_ylabel(f"{metric} (%)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, title="method (seeds)", title_fontsize=7)
    figure.tight_layout()
    caption = f"{metric} per epoch: mean over seeds, band ± std (from metrics.jsonl)"
    return ReportFigure("across seeds", _encode(figure), caption)


# ------------------------------------------------------------------------------ the page
def run_figures(
    info: aggregate_lib.RunInfo,
    *,
    max_points: int = 500,
    tsne_max_points: int = 800,
    names: dict[str, list[str]] | None = None,
    embed: Embed | None = None,
) -> list[ReportFigure]:
    """Every figure of one run's section (``names``: class names per task, by default those
    of the run's cache; ``embed``: see :func:`run_embedding`). The per-class and confusion
    figures score the predictions its protocol's table scores (:func:`_rule_classes`)."""
    run = info.path
    config = runs.read_config(run)
    if names is None:
        names = cache_class_names(config["cache"])
    figures = []
    curves = curves_figure(runs.read_metrics(run))
    if curves:
        figures.append(curves)
    split = _target_set(run)
    if split:
        multi = {t["name"] for t in config.get("tasks", []) if t.get("multi_label")}
        for task in sorted(runs.read_predictions(run, split)["scores"]):
            found, shows = _rule_classes(info, split, task, task in multi)
            if not found.counts.any():  # no labelled segment of the task
                continue
            task_names = names.get(task)
            figures.append(
                per_class_figure(found.values, task, task in multi, split, task_names, shows=shows)
            )
            if found.matrix is not None:
                figures.append(confusion_figure(found.matrix, task, split, task_names, shows=shows))
    embedding = run_embedding(run, max_points=max_points, embed=embed)
    figures.append(
        embedding_figure(
            embedding, tsne_max_points=tsne_max_points, names=names.get(embedding.task or "")
        )
    )
    return figures


def _rule_classes(
    info: aggregate_lib.RunInfo, split: str, task: str, multi: bool
) -> tuple[Any, str]:
    """``task``'s per-class numbers of a run as its protocol's table scores them (the
    per-class table's cells), and what they are of; the final predictions, said so, where the
    run lacks the checkpoints the rule scores or its protocol is unknown here."""
    from avda import protocols as protocols_lib
    from avda.evaluate.per_class import run_classes

    try:
        rule = protocols_lib.rule_for(info.protocol)
    except ConfigError:  # no table of this avda scores it (the page says): the figures do
        shows = f"of the final predictions (its protocol {info.protocol} is unknown here)"
        return run_classes(info, split, protocols_lib.EvaluationRule(), task, multi), shows
    if rule.checkpoints <= 1:
        return run_classes(info, split, rule, task, multi), "of the final predictions"
    try:
        found = run_classes(info, split, rule, task, multi)
    except RunError as error:  # too few kept, or one unreadable: its table refuses the run
        shows = (
            f"of the final predictions, not {rule.needs()} its protocol's table scores, which "
            f"refuses the run: {error}"
        )
        return run_classes(info, split, protocols_lib.EvaluationRule(), task, multi), shows
    if rule.reduce == "max":
        return found, f"of the checkpoint its protocol's per-class table scores ({rule.needs()})"
    return found, (
        f"of {rule.needs()} as its protocol's table (per-class values averaged; the confusion "
        f"counts summed, each segment {rule.checkpoints} times)"
    )


def _figure_html(figure: ReportFigure) -> str:
    caption = html.escape(figure.title + (f": {figure.caption}" if figure.caption else ""))
    return (
        f'<figure><img alt="{html.escape(figure.title)}" '
        f'src="data:image/png;base64,{figure.png}"><figcaption>{caption}</figcaption></figure>'
    )


def check_output(out: str | Path) -> None:
    """Refuse a page named other than ``.html``: it is HTML whatever its name (``-o x.txt``
    wrote one silently), as ``avda predict -o`` refuses a name other than ``.npz``; a folder or
    ``.html`` alone names no page (:func:`check_output_file`)."""
    out = check_output_file(out, "-o", "report.html")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(
            f"-o {out}: avda report writes one HTML page; name it {out.with_suffix('.html').name}"
        )


def build_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    title: str = "avda report",
    layout: str = "auto",
    baseline: str | None = None,
    max_points: int = 500,
    tsne_max_points: int = 800,
    max_detailed_runs: int = 60,
    progress: bool = False,
    embed: Embed | None = None,
) -> Path:
    """Write the report of the complete runs found under ``paths`` to ``out``; returns ``out``.

    ``embed(run, max_points)``: the trained head's embedding of a run's segments
    (:func:`avda.train.embedding.head_embedding`, what ``avda report`` passes); without it the
    embedding plots show the stored prediction scores."""
    from avda._io import progress_bar

    check_output(out)
    out = Path(out)
    if layout not in aggregate_lib.LAYOUTS:  # a paper layout: the per-run table is always there
        valid = ", ".join(aggregate_lib.LAYOUTS)
        raise ConfigError(f"unknown --layout {layout!r} for avda report; valid: {valid}")
    check_writable(out)  # a read-only folder said before the runs are read, not after
    run_dirs = aggregate_lib.find_runs(paths)
    infos = aggregate_lib.describe_runs(run_dirs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(run_dirs)} runs; avda {html.escape(avda.__version__)}; generated "
        f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}</p>",
        "<h2>Results</h2>",
    ]
    try:
        paper = aggregate_lib.aggregate(run_dirs, layout=layout)
    except AvdaError as error:  # the runs cannot make one (the page still shows each run)
        parts.append(f'<p class="note">no paper-style table: {html.escape(str(error))}</p>')
    else:  # a --compare that is not a method of the table is the user's to fix: refused
        parts.append(tables.aggregate_html(paper, baseline=baseline))
    per_run = tables.results_table(run_dirs)
    parts.append(
        per_run.to_html(
            index=False, float_format=lambda v: tables.decimal_text(v, 1), classes="runs", border=0
        )
    )
    parts.extend(per_class_section(run_dirs, infos))
    if any(len(p) > 1 for p in seed_groups(infos, warn=True).values()):  # warned once
        parts.append('<section id="seeds"><h2>Across seeds</h2>')
        table = seeds_table(infos, per_run).to_html(index=False, classes="seeds", border=0)
        opened = table.index(">", table.index("<table")) + 1
        caption = (
            "per method and setting: mean ± std over seeds (sample std), metrics in %, of each "
            "run's final predictions (a protocol's table above may score others: the mean of "
            "its last ones, or its best)"
        )
        parts.append(f"{table[:opened]}<caption>{caption}</caption>{table[opened:]}")
        figure = seed_curves_figure(infos)
        if figure is not None:
            parts.append(_figure_html(figure))
        parts.append("</section>")
    detailed = infos[:max_detailed_runs]
    if len(infos) > len(detailed):
        parts.append(
            f'<p class="note">figures for the first {len(detailed)} of {len(infos)} runs only '
            "(raise max_detailed_runs, or report fewer runs)</p>"
        )
    names_of: dict[str, dict[str, list[str]]] = {}
    clusters: dict[tuple[str, str, str], dict[str, Any]] = {}
    for info in detailed:  # audio clusters belong to a cache and source domains: shown once
        for entry in cluster_info(info.path):
            clusters.setdefault((entry["cache"], entry["modality"], entry["domains"]), entry)
    parts.append("<h2>Runs</h2><ul>")
    for index, info in enumerate(detailed):
        parts.append(f'<li><a href="#run-{index}">{html.escape(_run_title(info))}</a></li>')
    for index, entry in enumerate(clusters.values()):
        parts.append(
            f'<li><a href="#clusters-{index}">{html.escape(_clusters_title(entry))}</a></li>'
        )
    parts.append("</ul>")
    bar = progress_bar(detailed, desc="report", unit="run", disable=not progress)
    for index, info in enumerate(bar):
        cache = str(runs.read_config(info.path)["cache"])
        if cache not in names_of:
            names_of[cache] = cache_class_names(cache)
        parts.append(f'<section id="run-{index}"><h2>{html.escape(_run_title(info))}</h2>')
        parts.append(f"<p><code>{html.escape(str(info.path))}</code></p>")
        for figure in run_figures(
            info,
            max_points=max_points,
            tsne_max_points=tsne_max_points,
            names=names_of[cache],
            embed=embed,
        ):
            parts.append(_figure_html(figure))
        parts.append("</section>")
    for index, entry in enumerate(clusters.values()):
        parts.append(
            f'<section id="clusters-{index}"><h2>{html.escape(_clusters_title(entry))}</h2>'
        )
        parts.append(f"<p><code>{html.escape(entry['cache'])}</code></p>")
        names = cache_class_names(entry["cache"]).get(entry["task"])
        for figure in cluster_figures(entry, names):
            parts.append(_figure_html(figure))
        parts.append("</section>")
    parts.append("</body></html>")
    atomic_write_text(out, "\n".join(parts) + "\n")
    return out  # `avda report` says "wrote" once, on stdout (it was logged on stderr too)


def per_class_section(
    run_dirs: Sequence[Path], infos: Sequence[aggregate_lib.RunInfo]
) -> list[str]:
    """The HTML of the per-class tables (``avda evaluate --per-class``'s, under the paper
    table's protocol rule), one per task that every run has; a task whose table cannot be
    made (other kinds in some runs, no labelled target) is a note saying why. Its warnings
    are the paper table's, which were logged already."""
    from avda._io import quiet_logs
    from avda.evaluate import per_class as per_class_lib

    names = [t["name"] for t in infos[0].tasks] if infos else []
    shared = [n for n in names if all(n in {t["name"] for t in i.tasks} for i in infos)]
    parts = []
    for task in shared:
        try:
            with quiet_logs():
                table = per_class_lib.per_class(run_dirs, task=task)
        except AvdaError as error:
            text = f"no per-class table of {task}: {error}"
            parts.append(f'<p class="note">{html.escape(text)}</p>')
        else:
            parts.append(per_class_lib.render(table, "html"))
    if not parts:
        return []
    return ['<section id="per-class"><h2>Per class</h2>', *parts, "</section>"]


def _run_title(info: aggregate_lib.RunInfo) -> str:
    return f"{info.method} · {info.setting} · seed {info.seed}"


def _clusters_title(entry: dict[str, Any]) -> str:
    where = f"{Path(entry['cache']).name} · {entry['modality']} · source {entry['domains']}"
    return f"audio clusters · {where}"
