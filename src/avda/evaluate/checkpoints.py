"""Numbers a paper reports over several checkpoints of one run (MM-SADA: the last 9)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avda import runs
from avda.errors import RunError
from avda.scoring.protocols import mmsada_checkpoint_accuracy


def checkpoint_accuracy(
    run: str | Path, set_name: str = "target_test", task: str = "verb", last: int = 9
) -> dict[str, float]:
    """MM-SADA's reported number: mean top-1 over the last ``last`` epochs' predictions.

    Reads ``RUN/epochs/<epoch>/predictions/<set_name>.npz`` (written with
    ``keep_last_predictions``) and returns :func:`mmsada_checkpoint_accuracy`'s ``top1_mean``,
    ``top1_std`` and ``top1_of_mean_scores`` (an ensemble, not the paper's number).
    """
    folder = Path(run) / runs.EPOCHS
    epochs = runs.epoch_folders(run)
    if len(epochs) < last:
        raise RunError(
            f"{run} has predictions of {len(epochs)} epoch(s) under {folder}, {last} needed; "
            f"train with --set keep_last_predictions={last}"
        )
    scores, labels = [], None
    for epoch in epochs[-last:]:
        prediction = runs.read_predictions(epoch, set_name)
        if task not in prediction["scores"]:
            tasks = ", ".join(repr(t) for t in prediction["scores"]) or "none"
            multi = any(v.ndim == 2 for v in prediction["labels"].values())
            hint = (
                "; a multi-label run's mean over checkpoints is in `avda evaluate RUN --layout "
                "auto` under its protocol"
                if multi
                else ""
            )
            raise RunError(
                f"{run}: epoch {epoch.name} has no {task!r} scores for {set_name!r} (its tasks: "
                f"{tasks}){hint}"
            )
        # Scores are already clip-averaged probabilities: one "clip" whose softmax they are.
        probabilities = prediction["scores"][task].astype(np.float64)
        scores.append(np.log(np.clip(probabilities, 1e-30, None))[:, None, :])
        labels = prediction["labels"][task]
    return mmsada_checkpoint_accuracy(scores, labels)


__all__ = ["checkpoint_accuracy"]
