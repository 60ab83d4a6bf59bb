"""The run directory (DESIGN.md 3.5): what ``avda train`` writes and ``avda evaluate`` reads.

::

    RUN/
      config.yaml          resolved configuration: head, head config, cache, domains, tasks, seed
      provenance.json      the provenance of the cache the run trained on
      checkpoints/last.pt  model + optimiser + RNG state after the last finished epoch (resumable)
      metrics.jsonl        one JSON line per evaluation (epoch, losses, metrics per split)
      predictions/<set>.npz  uids, labels and scores per task for each evaluation set
      predictions/<set>.csv  uid, label and prediction per task (for people)
      run.json             written last: {"status": "complete", ...}

A run is complete exactly when ``run.json`` says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from avda.errors import RunError

CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
CHECKPOINT = "checkpoints/last.pt"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions"
STATUS = "run.json"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(run: Path, config: dict[str, Any]) -> None:
    atomic_write_text(run / CONFIG, yaml.safe_dump(config, sort_keys=False))


def read_config(run: Path) -> dict[str, Any]:
    path = Path(run) / CONFIG
    if not path.exists():
        raise RunError(
            f"{run} is not an avda run directory (no {CONFIG}); pass a folder `avda train -o` wrote"
        )
    from avda import safe_yaml

    config = safe_yaml.load(path.read_text(), source=str(path), error=RunError)
    if not isinstance(config, dict):
        raise RunError(f"{path} is not a mapping of settings; the run directory is damaged")
    return config


def append_metrics(run: Path, record: dict[str, Any]) -> None:
    with open(run / METRICS, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = Path(run) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run: Path, last_epoch: int) -> None:
    """Drop records written after the checkpoint a resumed run restarts from."""
    kept = [r for r in read_metrics(run) if r.get("epoch", 0) <= last_epoch]
    atomic_write_text(run / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def write_predictions(
    run: Path,
    name: str,
    uids: np.ndarray,
    labels: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
) -> None:
    folder = run / PREDICTIONS
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"uids": np.asarray(uids, dtype=str)}
    for task in scores:
        arrays[f"label_{task}"] = labels[task]
        arrays[f"score_{task}"] = scores[task].astype(np.float32)
    tmp = folder / f"{name}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, folder / f"{name}.npz")
    table = {"uid": arrays["uids"]}
    for task in scores:
        if scores[task].ndim == 2 and labels[task].ndim == 1:
            table[f"{task}_label"] = labels[task]
            table[f"{task}_prediction"] = scores[task].argmax(1)
    pd.DataFrame(table).to_csv(folder / f"{name}.csv", index=False)


def read_predictions(run: Path, name: str) -> dict[str, Any]:
    path = Path(run) / PREDICTIONS / f"{name}.npz"
    if not path.exists():
        raise RunError(f"{run} has no predictions for {name!r} ({path}); is the run complete?")
    with np.load(path) as data:
        out: dict[str, Any] = {"uids": data["uids"], "labels": {}, "scores": {}}
        for key in data.files:
            if key.startswith("label_"):
                out["labels"][key[6:]] = data[key]
            elif key.startswith("score_"):
                out["scores"][key[6:]] = data[key]
    return out


def prediction_sets(run: Path) -> list[str]:
    folder = Path(run) / PREDICTIONS
    return sorted(p.stem for p in folder.glob("*.npz")) if folder.exists() else []


def mark_complete(run: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(run / STATUS, json.dumps({"status": "complete", **summary}, indent=2))


def is_complete(run: Path) -> bool:
    path = Path(run) / STATUS
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "complete"
    except json.JSONDecodeError:
        return False


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by avda (run, stage or fine-tuning), read with
    ``weights_only=True``: tensors, numbers, strings and containers only, so a received run
    folder cannot run code. Anything else is refused with one line."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"{path} is not a checkpoint avda wrote (or it is damaged): {first[:200]}; remove "
            "it to start that run or stage again"
        ) from None
