"""Audio clusters per activity class: k-means for k = 1..max_k and the Elbow choice.

Audio-Adaptive (Zhang et al., CVPR 2022, sec. 3.1 "Audio-balanced learning") groups the source
segments of each class by their audio features, assuming one group per kind of interacted object
or environment, and balances the loss over those groups. The number of groups of a class is
chosen by the Elbow method on the k-means inertia curve. The authors' script
(``get_audio_cluster_feature.py``) fits, per class, ``KMeans(n_clusters=k, init="k-means++",
n_init=10, max_iter=300, random_state=0)`` for k = 1..20 on the 512-d VGGSound embeddings and
takes ``kneed.KneeLocator(ks, inertias, curve="convex", direction="decreasing").knee``.

:class:`KMeansElbow` is that procedure as a scikit-learn style estimator (``__init__`` stores,
``fit`` returns ``self``, learned attributes end in ``_``); the k-means fits are plain
``sklearn.cluster.KMeans``, so for the chosen k its labels equal a direct KMeans fit.

Knee rules (``knee=``):

- ``"kneedle"`` (default): Satopaa et al. 2011, exactly as ``kneed.KneeLocator`` 0.8 computes it
  offline with ``S = 1`` and ``interp_method="interp1d"`` (re-implemented: no kneed dependency).
  Normalise both axes to [0, 1], flip the convex decreasing curve to a concave increasing one,
  take the difference curve ``y_n - x_n``, and return the first local maximum after which the
  difference curve drops below ``max - S * mean(diff(x_n))``.
- ``"chord"``: the candidate k farthest from the straight line (chord) joining the first and
  last points of the normalised curve.

Kneedle finds no knee on curves whose difference curve never drops below its threshold (e.g. a
straight line); the chord rule decides then, and it gives k = 1 on a straight or flat curve.
k is capped at the number of distinct points of a class (the authors' script would fail there).

:func:`cluster_store` runs this per class on a cache and writes ``clusters/<modality>`` back.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.signal import argrelextrema
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans

import avda
from avda._io import TEMPORARY_SUFFIX, atomic_write, progress_bar
from avda.cache import open_cache
from avda.cache.lock import store_lock
from avda.errors import CacheError, ConfigError
from avda.paths import DESKTOP_FILES, child, refuse_foreign_folder

log = logging.getLogger(__name__)

KneeRule = Literal["kneedle", "chord"]
CLUSTER_INFO_VERSION = 1


# ------------------------------------------------------------------------------ knee rules
def _normalise(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span


def kneedle_elbow(x: np.ndarray, y: np.ndarray, sensitivity: float = 1.0) -> float | None:
    """The x of the Kneedle elbow of a convex, decreasing curve, or None when there is none.

    Equals ``kneed.KneeLocator(x, y, S=sensitivity, curve="convex", direction="decreasing",
    interp_method="interp1d", online=False).knee`` (kneed 0.8.6).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(y) == 0 or np.ptp(x) == 0:
        return None
    x_normalised = _normalise(x)
    y_normalised = _normalise(y)
    y_normalised = y_normalised.max() - y_normalised  # convex decreasing -> concave increasing
    difference = y_normalised - x_normalised
    maxima = argrelextrema(difference, np.greater_equal)[0]
    minima = argrelextrema(difference, np.less_equal)[0]
    if maxima.size == 0:
        return None
    thresholds = difference[maxima] - sensitivity * np.abs(np.diff(x_normalised).mean())
    threshold = 0.0
    threshold_index = int(maxima[0])
    maxima_seen = 0
    detecting = True
    for i in range(len(x)):
        if i < maxima[0]:
            continue
        if i == len(x) - 1:
            break
        if (maxima == i).any():
            threshold = thresholds[maxima_seen]
            threshold_index = i
            maxima_seen += 1
            detecting = True
        if (minima == i).any():
            threshold = 0.0
            detecting = False
        if detecting and difference[i + 1] < threshold:
            return float(x[threshold_index])
    return None


def chord_elbow(ks: np.ndarray, inertias: np.ndarray) -> int:
    """The k farthest from the chord joining the ends of the normalised curve (first on ties)."""
    x = np.asarray(ks, dtype=np.float64)
    y = np.asarray(inertias, dtype=np.float64)
    if len(x) < 3 or np.ptp(y) == 0:
        return int(x[0])
    x_normalised = _normalise(x)
    y_normalised = _normalise(y)
    # The chord runs from (0, 1) to (1, 0) for a decreasing curve: distance ∝ 1 - x - y.
    distance = (1.0 - x_normalised) - y_normalised
    if distance.max() <= 1e-9:  # straight (or concave) curve: no elbow, one cluster
        return int(x[0])
    return int(round(x[int(np.argmax(distance))]))


def choose_elbow(
    ks: np.ndarray, inertias: np.ndarray, *, knee: KneeRule = "kneedle", sensitivity: float = 1.0
) -> int:
    """The number of clusters for an inertia curve (see the module docstring)."""
    if knee == "kneedle":
        found = kneedle_elbow(ks, inertias, sensitivity)
        if found is not None:
            return int(round(found))
    elif knee != "chord":
        raise ConfigError(f"knee rule must be 'kneedle' or 'chord', got {knee!r}")
    return chord_elbow(ks, inertias)


# ------------------------------------------------------------------------------ estimator
class KMeansElbow(ClusterMixin, BaseEstimator):
    """k-means with the number of clusters chosen by the Elbow on ``k = 1..max_clusters``.

    Attributes after ``fit``: ``candidate_clusters_`` (the k tried), ``inertias_`` (one per k),
    ``n_clusters_`` (the elbow), ``kmeans_`` (the fitted ``sklearn.cluster.KMeans`` with that
    k), ``labels_``, ``cluster_centers_``, ``inertia_``, ``n_features_in_``.
    """

    def __init__(
        self,
        *,
        max_clusters: int = 20,
        knee: KneeRule = "kneedle",
        sensitivity: float = 1.0,
        n_init: int = 10,
        max_iter: int = 300,
        random_state: int | None = 0,
    ) -> None:
        self.max_clusters = max_clusters
        self.knee = knee
        self.sensitivity = sensitivity
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def _kmeans(self, n_clusters: int) -> KMeans:
        return KMeans(
            n_clusters=n_clusters,
            init="k-means++",
            n_init=self.n_init,
            max_iter=self.max_iter,
            random_state=self.random_state,
        )

    def fit(self, X: np.ndarray, y: Any = None) -> KMeansElbow:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ConfigError(f"KMeansElbow.fit expects a non-empty (n, d) array, got {X.shape}")
        if self.max_clusters < 1:
            raise ConfigError(f"max_clusters must be >= 1, got {self.max_clusters}")
        distinct = len(np.unique(X, axis=0))
        largest = min(self.max_clusters, distinct)
        fitted = {}
        for k in range(1, largest + 1):
            fitted[k] = self._kmeans(k).fit(X)
        self.candidate_clusters_ = np.arange(1, largest + 1)
        self.inertias_ = np.array([fitted[k].inertia_ for k in self.candidate_clusters_])
        self.n_clusters_ = choose_elbow(
            self.candidate_clusters_, self.inertias_, knee=self.knee, sensitivity=self.sensitivity
        )
        self.kmeans_ = fitted[self.n_clusters_]
        self.labels_ = self.kmeans_.labels_
        self.cluster_centers_ = self.kmeans_.cluster_centers_
        self.inertia_ = self.kmeans_.inertia_
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.kmeans_.predict(np.asarray(X, dtype=np.float64))


# ------------------------------------------------------------------------------ per class
@dataclasses.dataclass
class ClassClusters:
    """The clustering of one class: its segments (cache rows), their cluster ids, the curve."""

    class_id: int
    rows: np.ndarray
    labels: np.ndarray
    candidate_clusters: np.ndarray
    inertias: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1

    def to_info(self) -> dict[str, Any]:
        return {
            "n_clusters": self.n_clusters,
            "count": len(self.rows),
            "candidate_clusters": self.candidate_clusters.tolist(),
            "inertias": [float(v) for v in self.inertias],
        }


def cluster_per_class(
    features: np.ndarray,
    classes: np.ndarray,
    *,
    max_clusters: int = 20,
    knee: KneeRule = "kneedle",
    n_init: int = 10,
    random_state: int | None = 0,
    rows: np.ndarray | None = None,
) -> dict[int, ClassClusters]:
    """Fit :class:`KMeansElbow` on the features ``(n, d)`` of each class in ``classes``."""
    features = np.asarray(features, dtype=np.float64)
    classes = np.asarray(classes)
    rows = np.arange(len(features)) if rows is None else np.asarray(rows)
    out = {}
    for class_id in np.unique(classes):
        members = np.flatnonzero(classes == class_id)
        estimator = KMeansElbow(
            max_clusters=max_clusters, knee=knee, n_init=n_init, random_state=random_state
        ).fit(features[members])
        out[int(class_id)] = ClassClusters(
            class_id=int(class_id),
            rows=rows[members],
            labels=estimator.labels_.astype(np.int64),
            candidate_clusters=estimator.candidate_clusters_,
            inertias=estimator.inertias_,
        )
    return out


# ------------------------------------------------------------------------------ on a cache
@dataclasses.dataclass
class ClusterGroup:
    """One clustering run over the train segments of a set of domains."""

    domains: list[str]
    classes: dict[int, ClassClusters]

    @property
    def key(self) -> str:
        return group_key(self.domains)


@dataclasses.dataclass
class ClusterResult:
    store: Path
    modality: str
    groups: list[ClusterGroup]
    plots: list[Path] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.store}: clusters/{self.modality} written"]
        for group in self.groups:
            counts = ", ".join(f"{c}:{group.classes[c].n_clusters}" for c in sorted(group.classes))
            lines.append(
                f"  domain(s) {group.key!r} (as a run's source): clusters per class {counts}"
            )
        for path in self.plots:
            lines.append(f"  plot {path}")
        return "\n".join(lines)


def group_key(domains: Sequence[str]) -> str:
    return ",".join(sorted(domains))


def _task_column(task: str) -> str:
    from avda.train.data import TASK_COLUMNS

    if task not in ("verb", "noun"):
        raise ConfigError(
            f"audio clusters are made per class of a single-label task (verb or noun), got {task!r}"
        )
    return TASK_COLUMNS[task]


def cluster_settings(
    *, task: str, split: str, max_clusters: int, knee: str, n_init: int, random_state: int | None
) -> dict[str, Any]:
    """The settings recorded with (and compared against) stored clusters."""
    return {
        "task": task,
        "split": split,
        "max_clusters": max_clusters,
        "knee": knee,
        "n_init": n_init,
        "init": "k-means++",
        "max_iter": 300,
        "random_state": random_state,
        "features": "mean over clips",
    }


def cluster_store(
    path: str | Path,
    *,
    modality: str = "audio",
    source: Sequence[str] | None = None,
    split: str = "train",
    task: str = "verb",
    max_clusters: int = 20,
    knee: KneeRule = "kneedle",
    n_init: int = 10,
    random_state: int | None = 0,
    plot_dir: str | Path | None = None,
    progress: bool = True,
) -> ClusterResult:
    """Cluster the ``split`` segments of each class of ``source`` and write them into the cache.

    ``source`` is a list of domains clustered together (multi-source: one clustering over their
    union); None clusters every domain that has labelled ``split`` segments on its own. Features
    are the segment's clips averaged. Cluster ids are per class (0..k_c-1); segments not
    clustered are -1. Groups clustered earlier for other (disjoint) segments are kept, so
    ``--source D1`` then ``--source D2`` leaves both in the store. Provenance (settings, knee
    and inertia curve per class) is stored in the array's ``avda_clusters`` attribute.
    """
    from avda.train.data import check_domains, select_rows

    if max_clusters < 1:
        raise ConfigError(f"--max-k must be >= 1, got {max_clusters}")
    if plot_dir is not None:  # before any work, not after the clusters are written
        from avda.optional import require

        require("matplotlib", package="matplotlib", extra="report", feature="elbow plots")
        # --plot . among a user's files: refused, as train -o; a folder of earlier plots is ours
        plots = Path(plot_dir)
        ours = plots.is_dir() and all(_is_elbow_plot(p.name) for p in plots.iterdir())
        refuse_foreign_folder(plots, "--plot", "avda cluster's plot folder", ours, "elbows")
    open_cache(path)  # a missing / foreign store is refused before a lock file is made
    with store_lock(path, what="avda cluster"):
        store = open_cache(path, mode="r+")
        store.modality_info(modality)
        column = _task_column(task)
        segments = store.segments
        if column not in segments:
            multi = (
                "; its classes are multi-label ('labels', CharadesEgo), which `avda cluster` "
                "does not cluster: audio-adaptive's multi-label variant clusters each present "
                "class in its run (docs/methods.md, 'Multi-label variant'), nothing to do first"
                if "labels" in segments
                else ""
            )
            raise CacheError(
                f"cache {store.path} has no {column!r} column: clusters are made per {task} "
                f"class{multi}"
            )
        labelled = segments[column].notna().to_numpy() & (segments["split"] == split).to_numpy()
        if source:
            check_domains(store, source, "source")
            groups_domains = [sorted(source)]
        else:
            groups_domains = [[d] for d in sorted(segments["domain"][labelled].unique())]
        if not groups_domains:
            raise CacheError(
                f"cache {store.path} has no labelled {split!r} segments to cluster; "
                "check --source and the manifest's class columns"
            )
        settings = cluster_settings(
            task=task,
            split=split,
            max_clusters=max_clusters,
            knee=knee,
            n_init=n_init,
            random_state=random_state,
        )
        groups = []
        for domains in progress_bar(
            groups_domains, desc="cluster", unit="domain", disable=not progress
        ):
            rows = select_rows(store, domains, [split], [modality])
            rows = rows[segments[column].iloc[rows].notna().to_numpy()]
            if len(rows) == 0:
                raise CacheError(
                    f"domain(s) {domains} have no extracted, labelled {split!r} segments "
                    f"with {modality!r} features in {store.path}"
                )
            features = store.load(modality, rows).mean(axis=1)  # (n, K, D) -> (n, D)
            classes = segments[column].iloc[rows].to_numpy(dtype=np.int64)
            per_class = cluster_per_class(
                features,
                classes,
                max_clusters=max_clusters,
                knee=knee,
                n_init=n_init,
                random_state=random_state,
                rows=rows,
            )
            groups.append(ClusterGroup(domains=list(domains), classes=per_class))
            log.info(
                "clusters for %s: %s",
                group_key(domains),
                {c: g.n_clusters for c, g in per_class.items()},
            )

        clusters, info = _merge(store, modality, groups, settings)
        store.write_clusters(modality, clusters, info)
        result = ClusterResult(store=store.path, modality=modality, groups=groups)
        if plot_dir is not None:
            result.plots = plot_elbows(result, plot_dir)
        return result


def _merge(store, modality: str, groups: list[ClusterGroup], settings: dict[str, Any]):
    """New cluster ids and provenance, keeping earlier groups whose rows do not overlap."""
    clusters = np.full(store.num_segments, -1, dtype=np.int64)
    kept: dict[str, Any] = {}
    new_rows = np.concatenate([c.rows for g in groups for c in g.classes.values()])
    previous = store.read_clusters(modality)
    if previous is not None:
        old_ids, old_info = previous
        for key, group in old_info.get("groups", {}).items():
            old_rows = np.asarray(group.get("rows", []), dtype=np.int64)
            if len(old_rows) and not np.isin(old_rows, new_rows).any():
                clusters[old_rows] = old_ids[old_rows]
                kept[key] = group
    for group in groups:
        entry = {"domains": group.domains, "settings": settings, "classes": {}, "rows": []}
        for class_id, result in sorted(group.classes.items()):
            clusters[result.rows] = result.labels
            entry["classes"][str(class_id)] = result.to_info()
            entry["rows"].extend(int(r) for r in result.rows)
        entry["rows"].sort()
        kept[group.key] = entry
    info = {
        "version": CLUSTER_INFO_VERSION,
        "method": "k-means per class, k by the Elbow (avda.train.clustering.KMeansElbow)",
        "avda_version": avda.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "groups": kept,
    }
    return clusters, info


def stored_clusters(
    store, modality: str, domains: Sequence[str], settings: dict[str, Any]
) -> np.ndarray | None:
    """Cluster ids ``(N,)`` of a stored group for ``domains`` made with ``settings``, or None."""
    previous = store.read_clusters(modality)
    if previous is None:
        return None
    ids, info = previous
    group = info.get("groups", {}).get(group_key(domains))
    if group is None or group.get("settings") != settings:
        return None
    out = np.full(len(ids), -1, dtype=np.int64)
    rows = np.asarray(group["rows"], dtype=np.int64)
    out[rows] = ids[rows]
    return out


# ------------------------------------------------------------------------------ plots
def _is_elbow_plot(name: str) -> bool:
    """Whether a file named ``name`` is one :func:`plot_elbows` writes (its temporary, left by
    a killed run, too) or a desktop's."""
    ends = (".png", ".png" + TEMPORARY_SUFFIX)
    return name in DESKTOP_FILES or (name.startswith("elbow_") and name.endswith(ends))


def plot_elbows(result: ClusterResult, directory: str | Path) -> list[Path]:
    """One PNG per (source group, class): the inertia curve with the chosen k marked, each
    written whole or not at all.

    Uses matplotlib's Agg canvas directly, so no display and no global backend switch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for group in result.groups:
        for class_id, clusters in sorted(group.classes.items()):
            figure = Figure(figsize=(4.5, 3.2))
            FigureCanvasAgg(figure)
            axes = figure.add_subplot()
            axes.plot(clusters.candidate_clusters, clusters.inertias, marker="o", markersize=3)
            chosen = clusters.n_clusters
            axes.axvline(chosen, color="tab:red", linestyle="--", label=f"elbow k = {chosen}")
            axes.set_xlabel("number of clusters k")
            axes.set_ylabel("k-means inertia")
            axes.set_title(f"{result.modality}, source domain(s) {group.key}, class {class_id}")
            axes.legend()
            figure.tight_layout()
            name = f"elbow_{group.key.replace(',', '+')}_class{class_id:03d}.png"
            path = child(directory, name, "plot name (from the domain names)")
            atomic_write(path, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=100))
            paths.append(path)
    return paths


__all__ = [
    "ClassClusters",
    "ClusterGroup",
    "ClusterResult",
    "KMeansElbow",
    "choose_elbow",
    "chord_elbow",
    "cluster_per_class",
    "cluster_settings",
    "cluster_store",
    "kneedle_elbow",
    "plot_elbows",
    "stored_clusters",
]
