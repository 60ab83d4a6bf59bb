"""The run directory: what ``avda train`` writes and ``avda evaluate`` reads.

::

    RUN/
      config.yaml          resolved configuration: head, head config, cache, domains, tasks, seed
      provenance.json      the provenance of the cache the run trained on, and under
                           "environment" what trained it (avda version and git revision,
                           torch, CUDA, cuDNN, GPU: avda.environment); "resumed" lists the
                           environment of each resume
      checkpoints/last.pt  model + optimiser + RNG state after the last finished epoch (resumable)
      metrics.jsonl        one JSON line per evaluation (epoch, losses, metrics per split)
      predictions/<set>.npz  uids, labels and scores per task for each evaluation set
      predictions/<set>.csv  uid, label and prediction per task (multi-label: the true ids
                             and the five best-scored, ';'-joined; for people)
      run.json             written last: {"status": "complete", ...}

A run is complete exactly when ``run.json`` says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from avda._io import (
    atomic_write,
    atomic_write_text,
    atomic_write_together,
    refused_global,
    torch_load,
)
from avda.errors import RunError
from avda.scoring.metrics import predicted_classes, rank_classes, task_ties

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
CHECKPOINT = "checkpoints/last.pt"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions"
GROUP_COLUMN = "group"  # a predictions file's column of the rows' score_group ("" = alone)
STATUS = "run.json"
EPOCHS = "epochs"  # RUN/epochs/<epoch>/predictions: the last keep_last_predictions evaluations


def save_checkpoint(state: Any, path: Path) -> None:
    """``torch.save`` of ``state`` to ``path``, atomically (a temporary file, then a rename).

    The state is serialised in memory first and written with an ordinary file write, so a full
    disk or a file-size limit surfaces as the ``OSError`` it is (one line from the CLI, the
    previous checkpoint intact) rather than as torch's zip writer's ``unexpected pos``.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


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


def read_provenance(run: Path) -> dict[str, Any] | None:
    """The provenance of the cache the run started on (None for runs written before it)."""
    path = Path(run) / PROVENANCE
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(
            f"{path} is damaged ({exc}); it records which cache the run trained on: remove "
            f"{run} to start the run again"
        ) from None
    if not isinstance(value, dict):
        raise RunError(f"{path} is damaged (not a JSON object); remove {run} to start again")
    return value


def is_evaluated(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether the training loop evaluates after ``epoch`` (every ``eval_every``, and the last)."""
    return epoch % max(int(eval_every), 1) == 0 or epoch == epochs


def evaluations(epochs: int, eval_every: int) -> int:
    """How many evaluations (checkpoints a protocol's table can average) a run makes."""
    return sum(is_evaluated(e, epochs, eval_every) for e in range(1, int(epochs) + 1))


def append_metrics(run: Path, record: dict[str, Any]) -> None:
    with open(run / METRICS, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The run's metric records. A cut-off last line (a run killed while writing it) is
    dropped, so reading and resuming go on; a damaged line before it is one RunError."""
    path = Path(run) / METRICS
    if not path.exists():
        return []
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise RunError(f"{path} is not text; remove it (or {run}) to train the run again") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):
            log.warning("%s: its last line is cut off (a run stopped writing it); ignored", path)
        else:
            raise RunError(
                f"{path} line {number} is damaged (not a JSON record); remove that line, or "
                f"remove {run} to train the run again"
            )
    return records


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
    groups: np.ndarray | None = None,
) -> None:
    """``groups``: each row's ``score_group`` (written as that column where not None)."""
    columns = None if groups is None else {GROUP_COLUMN: groups}
    save_predictions(run / PREDICTIONS / f"{name}.npz", uids, labels, scores, columns)


def save_predictions(
    path: Path,
    uids: np.ndarray,
    labels: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
    columns: dict[str, np.ndarray] | None = None,
) -> Path:
    """``path`` (``.npz``: uids, ``label_<task>``, ``score_<task>``) and the table for people
    beside it (``.csv``), atomically: the files a run writes per evaluation set, and what
    ``avda predict -o`` writes (:func:`load_predictions` reads either). ``columns``: more
    per-row values written into both (``avda predict``'s ``set``)."""
    path = Path(path)
    folder, name = path.parent, path.name.removesuffix(".npz")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"uids": np.asarray(uids, dtype=str)}
    arrays.update({k: np.asarray(v, dtype=str) for k, v in (columns or {}).items()})
    for task in scores:
        arrays[f"label_{task}"] = labels[task]
        arrays[f"score_{task}"] = scores[task].astype(np.float32)
    table = predictions_table(arrays["uids"], labels, scores, columns).to_csv(index=False)
    npz, csv = folder / f"{name}.npz", folder / f"{name}.csv"
    # both or neither: a full disk between them left a new .npz beside an earlier .csv
    atomic_write_together(
        {
            npz: lambda tmp: np.savez_compressed(tmp, **arrays),
            csv: lambda tmp: tmp.write_text(table),
        },
        temporaries={npz: folder / f"{name}.tmp.npz"},  # savez adds .npz to a name without it
    )
    return folder / f"{name}.npz"


def predictions_table(
    uids: np.ndarray,
    labels: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
    columns: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The table a predictions ``.csv`` holds: ``uid``, the ``columns``, then per task its
    ``<task>_label`` and ``<task>_prediction`` (multi-label: ``<task>_labels``, ``_top5``)."""
    table = {"uid": np.asarray(uids, dtype=str)}
    table.update({k: np.asarray(v, dtype=str) for k, v in (columns or {}).items()})
    single = [t for t in scores if scores[t].ndim == 2 and labels[t].ndim == 1]
    for task in scores:
        if task in single:
            table[f"{task}_label"] = labels[task]
            table[f"{task}_prediction"] = predicted_classes(scores[task], task_ties(task, single))
        elif scores[task].ndim == 2 and labels[task].shape == scores[task].shape:
            # multi-label: the true ids as the manifest writes them, the five best-scored
            top = rank_classes(scores[task], 5)
            table[f"{task}_labels"] = [";".join(map(str, np.flatnonzero(r))) for r in labels[task]]
            table[f"{task}_top5"] = [";".join(map(str, r)) for r in top]
    return pd.DataFrame(table)


def read_predictions(run: Path, name: str) -> dict[str, Any]:
    path = Path(run) / PREDICTIONS / f"{name}.npz"
    if not path.exists():
        raise RunError(f"{run} has no predictions for {name!r} ({path}); is the run complete?")
    out = load_predictions(path)
    if (Path(run) / CONFIG).exists():  # a run's own predictions: one score per class
        tasks = read_config(Path(run)).get("tasks") or []
        for task in tasks if isinstance(tasks, list) else []:
            scores = out["scores"].get(task.get("name")) if isinstance(task, dict) else None
            classes = task.get("num_classes") if scores is not None else None
            if isinstance(classes, int) and (scores.ndim != 2 or scores.shape[1] != classes):
                raise RunError(
                    f"{path}: {task['name']} scores of shape {list(scores.shape)} for "
                    f"{classes} classes (config.yaml): not a predictions file avda wrote for "
                    "this run; remove it and train the run again"
                )
    return out


def load_predictions(path: Path) -> dict[str, Any]:
    """A predictions file (a run's ``predictions/<set>.npz``, or ``avda predict -o``'s):
    ``{"uids", "labels": {task: ...}, "scores": {task: ...}, "groups"}``, checked (one row per
    segment, each listed once, finite scores); anything else is one RunError naming the file.
    ``groups``: the rows' ``score_group`` where the file records one (a multi-label mAP scores
    each group by the maximum over its rows: :func:`avda.scoring.metrics.multilabel_map`),
    else None."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path} does not exist; give a predictions file (.npz) avda wrote")
    data = read_arrays(path)
    if "uids" not in data:
        raise RunError(f"{path} is not a predictions file avda wrote: it has no uids")
    out: dict[str, Any] = {"uids": data["uids"], "labels": {}, "scores": {}}
    out["groups"] = data.get(GROUP_COLUMN)
    for key, value in data.items():
        if key.startswith("label_"):
            out["labels"][key[6:]] = value
        elif key.startswith("score_"):
            out["scores"][key[6:]] = value
    uids = out["uids"]
    unique, counts = np.unique(uids, return_counts=True)
    if len(unique) != len(uids):  # each segment would count as often as it appears
        first = unique[np.argmax(counts > 1)]
        raise RunError(
            f"{path} lists segment {str(first)!r} (and maybe others) more than once: not a "
            "predictions file avda wrote; remove it and train the run again"
        )
    grouped = {GROUP_COLUMN: out["groups"]} if out["groups"] is not None else {}
    for key, values in (*out["labels"].items(), *out["scores"].items(), *grouped.items()):
        if len(values) != len(uids):
            raise RunError(
                f"{path}: {key} has {len(values)} rows for {len(uids)} segments: not a "
                "predictions file avda wrote; remove it and train the run again"
            )
    for key, scores in out["scores"].items():
        finite = np.isfinite(scores) if np.issubdtype(scores.dtype, np.number) else None
        if finite is not None and not finite.all():
            row = int(np.argmin(finite.reshape(len(finite), -1).all(axis=1)))
            raise RunError(
                f"{path}: {key} scores of segment {str(uids[row])!r} (and maybe others) are "
                "NaN or infinite: a run never writes them (its training stops first); remove "
                "the file and train the run again"
            )
    return out


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` avda wrote (predictions, stage outputs), read with
    ``allow_pickle=False``: an object array (pickled Python objects, which could run code), a
    lone ``.npy`` or a damaged file is refused with one line naming it."""
    import zipfile

    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"it holds a single {type(data).__name__}, not named arrays")
        with data:
            return {key: data[key] for key in data.files}
    except MemoryError:
        raise
    except (ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise RunError(
            f"{path} is not an array file avda wrote (or it is damaged): {first[:200]}; remove "
            "it and train again what wrote it"
        ) from None


def prediction_sets(run: Path) -> list[str]:
    folder = Path(run) / PREDICTIONS
    return sorted(p.stem for p in folder.glob("*.npz")) if folder.exists() else []


def epoch_folders(run: Path) -> list[Path]:
    """``RUN/epochs/<epoch>`` folders in training order: by number, as the loop names them
    ``f"{epoch:04d}"``, which a run of over 9999 epochs outgrows (``10000`` sorts before
    ``9999`` as text); a name not a number after them, by name."""
    folder = Path(run) / EPOCHS
    if not folder.exists():
        return []
    found = [p for p in folder.iterdir() if p.is_dir()]
    return sorted(found, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def mark_complete(run: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(run / STATUS, json.dumps({"status": "complete", **summary}, indent=2))


def is_complete(run: Path) -> bool:
    path = Path(run) / STATUS
    if not path.exists():
        return False
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(value, dict) and value.get("status") == "complete"


class CheckpointRefused(RunError):
    """A run, stage or fine-tuning checkpoint that avda did not write (or a damaged one): never
    worked around (``avda report`` does not fall back to its scores), always refused."""


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by avda (run, stage or fine-tuning), read with
    ``weights_only=True``: tensors, numbers, strings and containers only, so a received run
    folder cannot run code. Anything else is refused with one line."""
    import pickle

    try:
        return torch_load(path)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - pickle, zip, a text file: one line for all
        if isinstance(exc, OSError) and not isinstance(exc, EOFError):
            raise  # missing file, permission: the CLI's own one line
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch bolds a warning
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # torch's refusal opens with how to load the file anyway; the reason is further down
        refused = refused_global(text)
        first = (
            f"it would load {refused}, which avda never runs"
            if refused
            else (lines[0] if lines else type(exc).__name__)
        )
        if not isinstance(exc, pickle.UnpicklingError | RuntimeError | EOFError):
            first = f"{type(exc).__name__}: {first}"
        raise CheckpointRefused(
            f"{path} is not a checkpoint avda wrote (or it is damaged): {first[:200]}; remove "
            "it to start that run or stage again"
        ) from None
