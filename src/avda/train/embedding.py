"""A finished run's trained head, rebuilt to embed source and target segments (``avda report``).

The report (:mod:`avda.evaluate.report`) receives :func:`head_embedding` from the CLI, so
evaluation does not import training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from avda import runs
from avda.train import data as data_lib
from avda.train.setup import RunSetup, quiet_repeated, training_rows, unlabelled_only
from avda.train.stages import TrainingContext


@dataclasses.dataclass
class HeadEmbedding:
    """``before``: clip-averaged cache features, ``after``: the head's embedding, ``(n, F)``
    each; ``is_target`` ``(n,)``; ``classes`` ``(n,)`` of ``task`` (-1 unknown) or None."""

    before: np.ndarray
    after: np.ndarray
    is_target: np.ndarray
    classes: np.ndarray | None
    task: str | None


def _sample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(rows, size=limit, replace=False)) if len(rows) > limit else rows


def _shares(counts: dict[str, int], total: int) -> dict[str, int]:
    """How many rows of each side (``counts``: the rows it has) an embedding of at most
    ``total`` points samples: an equal share each, the sides with fewer rows than theirs giving
    the rest to the others; the points add up to ``total`` (``max_points // 2`` per side
    plotted 2 points for 3, and 50 for 60 where the target had 20 rows)."""
    shares, left = {}, total
    ordered = sorted(counts, key=counts.get)  # the smallest first: what it leaves goes on
    for place, side in enumerate(ordered):
        shares[side] = min(counts[side], left // (len(ordered) - place))
        left -= shares[side]
    return shares


def head_embedding(run: Path, max_points: int = 500, seed: int = 0) -> HeadEmbedding:
    """Cache features and the trained head's embedding of source and target segments.

    The head is rebuilt from ``config.yaml`` and ``checkpoints/last.pt`` and sees what the loop
    showed it: the same clips, the same standardisation (the checkpoint's statistics), its
    ``prepare`` hook and its ``before_evaluation`` hook per side (AdaBN switches to target
    statistics). A staged head (:attr:`Head.staged`, Audio-Adaptive) reloads its finished
    stages from ``RUN/stages`` read only, keyed by the run's training rows, as ``avda predict``
    does (a stage missing or made with other rows is a RunError: the report then embeds the
    prediction scores). An adapting head's target
    set is the run's unlabelled target training rows (:func:`avda.train.setup.training_rows`:
    without its labelled target share, and with ``unlabelled_only`` rows in place of their
    videos' other rows), as in training and ``avda predict``.
    """
    config = runs.read_config(run)
    setup = RunSetup.from_run(run)
    staged = setup.head_class.staged
    state = runs.load_checkpoint(run / runs.CHECKPOINT)
    statistics = state.get("standardize") or {}
    store, modalities = setup.store, setup.modalities
    splits = ["train", "val", "test"]
    with quiet_repeated():
        data_rows = {
            side: data_lib.select_rows(store, config[side], splits, modalities)
            for side in ("source", "target")
        }
    # unlabelled-only rows (CharadesEgo's whole-video rows) are never source rows in training
    data_rows["source"] = data_rows["source"][~unlabelled_only(store, data_rows["source"])]
    rng = np.random.default_rng(seed)
    shares = _shares({side: len(rows) for side, rows in data_rows.items()}, max_points)
    sides = {
        side: setup.load(f"{side}_embedding", _sample(rows, shares[side], rng), statistics)
        for side, rows in data_rows.items()
    }
    shapes = {m: tuple(sides["source"].inputs[m].shape[1:]) for m in modalities}
    with quiet_repeated():
        model = setup.build_head(shapes)
    adaptation = None
    empty = setup.load("source_train", np.zeros(0, np.int64), statistics)
    train_set = empty
    if model.adapts_at_evaluation or staged:  # the rows the run trained with
        with quiet_repeated():
            source_train, target_train = training_rows(
                store, config["source"], config["target"], modalities, setup.config
            )
        adaptation = setup.load("target_train", target_train, statistics)
        if staged:  # its stages reload from RUN/stages, keyed by these rows (avda predict)
            train_set = setup.load("source_train", source_train, statistics)
    with quiet_repeated():
        model.prepare(
            TrainingContext(
                run=run,
                store=store,
                train_set=train_set,
                target_set=adaptation or empty,
                eval_sets=dict(sides),
                seed=config.get("seed", 0),
                device="cpu",
                read_only=True,  # a report reloads a staged head's stages, writes nothing
            )
        )
    adaptation = adaptation if model.adapts_at_evaluation else None
    model.load_state_dict(state["model"])
    model.eval()
    task = next((t.name for t in setup.tasks if not t.multi_label), None)
    before, after, is_target, classes = [], [], [], []
    with torch.no_grad():
        for side, feature_set in sides.items():
            model.before_evaluation(feature_set, adaptation)
            for index in feature_set.batches(512, shuffle=False):
                batch, _ = feature_set.batch(index)
                after.append(model(batch).features.float().numpy())
                # (B, K, D) -> (B, D); a spatial map (faithful audio-adaptive) flattened
                pooled = [batch[m].float().mean(dim=1).flatten(1) for m in modalities]
                before.append(torch.cat(pooled, dim=1).numpy())
                is_target.append(np.full(len(index), side == "target"))
                if task is not None:
                    classes.append(feature_set.labels[task][index].numpy())
    return HeadEmbedding(
        np.concatenate(before),
        np.concatenate(after),
        np.concatenate(is_target),
        classes=np.concatenate(classes).astype(np.int64) if task is not None else None,
        task=task,
    )


__all__ = ["HeadEmbedding", "head_embedding"]
