"""Multi-stage heads: what the loop hands to ``prepare``, and resumable stage outputs.

Some methods train in stages (Audio-Adaptive: audio classifier, clusters, pseudo-absent labels,
encoder, pseudo labels, then the recognizer). The training loop builds the head, calls
``head.prepare(context)`` once before it builds the optimiser, then trains the final stage like
any other head. ``prepare`` runs or reloads each earlier stage; it may also attach per-row
tensors to the training sets (keys starting with ``_``), which the loop batches with the
features. A stage writes its output under ``RUN/stages/`` and *then* a JSON record, so a stage
is finished exactly when its record exists, and an interrupted run resumes at the first
unfinished stage (and inside it, at the last finished epoch)::

    RUN/stages/<name>.json        record: stage settings (key), summary, avda version, created
    RUN/stages/<name>.pt | .npz   the output (module weights or arrays)
    RUN/stages/<name>.partial.pt  per-epoch checkpoint while the stage trains (removed when done)

A record whose key differs from the settings asked for is refused (:class:`RunError`), as the
loop refuses a run directory with another configuration. Every key holds the identity of the
cache its features came from (:func:`cache_identity`), so a stage is never reused on another
cache's features; a record written before keys held it is recomputed (:meth:`StageStore.is_done`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import avda
from avda import runs
from avda._io import atomic_write, atomic_write_text
from avda.cache import FeatureCache
from avda.cache.store import as_recorded, comparable_record, store_identity
from avda.errors import RunError
from avda.train.data import FeatureSet
from avda.train.sinks import MetricSinks

log = logging.getLogger(__name__)

STAGES_FOLDER = "stages"
# The key's entry naming the cache a stage's features came from (:func:`cache_identity`).
CACHE_KEY = "cache"


@dataclasses.dataclass
class TrainingContext:
    """Everything a head's ``prepare`` hook may use; built by :func:`avda.train.loop.train`."""

    run: Path
    store: FeatureCache
    train_set: FeatureSet
    target_set: FeatureSet
    eval_sets: dict[str, FeatureSet]
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    sinks: MetricSinks | None = None  # avda train --log: stage epochs stream there too
    # ``avda predict``: the run's stages are reloaded, never trained, and nothing is written
    # into the run folder (a stage missing there is one RunError)
    read_only: bool = False

    def all_sets(self) -> list[FeatureSet]:
        return [self.train_set, self.target_set, *self.eval_sets.values()]


def fingerprint(values: Sequence[Any] | np.ndarray) -> str:
    """A short sha256 of a sequence of values (segment uids, labels) for stage keys."""
    digest = hashlib.sha256()
    for value in np.asarray(values).ravel().tolist():
        digest.update(str(value).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cache_identity(store: FeatureCache, modalities: Sequence[str]) -> dict[str, Any]:
    """The cache a stage read ``modalities`` of, for its key: the store (its ``cache_id``,
    written once when it was made, or for a store made before that its creation time) and how
    each modality's features were made (backbone, weights by their sha256, clips, precision,
    the file an import read: :func:`~avda.cache.store.comparable_record`). Read from the store's
    provenance, no feature is read; a modality added to the store later is in no key of a
    stage that does not read it."""
    return {
        "store": store_identity(store.provenance),
        "features": {m: comparable_record(store.modality_info(m)) for m in sorted(set(modalities))},
    }


def _recorded_later(recorded: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether two :func:`cache_identity` entries name the same store and features, ``wanted``
    only adding fields ``recorded`` lacks that :func:`~avda.cache.store.as_recorded` leaves
    out."""
    old, new = recorded.get("features") or {}, wanted.get("features") or {}
    if recorded.get("store") != wanted.get("store") or set(old) != set(new):
        return False
    return all(as_recorded(new[m], old[m]) == old[m] for m in new)


def _as_stored(stored: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """``key`` as stored (JSON) to compare with ``stored`` (a record's or a partial
    checkpoint's key); where the two name the same cache but for fields recorded since
    (:func:`_recorded_later`), ``key`` takes the stored cache entry (the stages after it
    digest the key as recorded)."""
    wanted = json.loads(json.dumps(key))
    if CACHE_KEY in stored and CACHE_KEY in wanted:
        if _recorded_later(stored[CACHE_KEY], wanted[CACHE_KEY]):
            key[CACHE_KEY] = wanted[CACHE_KEY] = stored[CACHE_KEY]
    return wanted


def _cache_difference(recorded: dict[str, Any], wanted: dict[str, Any]) -> str:
    """How two :func:`cache_identity` entries differ, in words."""
    parts = []
    if recorded.get("store") != wanted.get("store"):
        parts.append(f"store {recorded.get('store')} -> {wanted.get('store')}")
    old, new = recorded.get("features") or {}, wanted.get("features") or {}
    for modality in sorted({*old, *new}):
        before, now = old.get(modality) or {}, new.get(modality) or {}
        keys = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
        shown = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in keys[:2])
        if keys:
            parts.append(f"{modality} features: {shown}")
    return "; ".join(parts) or "its record"


def _own_settings(key: dict[str, Any]) -> dict[str, Any]:
    """A key without its cache and its upstream stages' digests (which hold their caches)."""
    return {k: v for k, v in key.items() if k not in (CACHE_KEY, "upstream")}


class StageStore:
    """The ``RUN/stages/`` folder: finished outputs with their records, partial checkpoints."""

    def __init__(self, run: str | Path, *, read_only: bool = False) -> None:
        self.folder = Path(run) / STAGES_FOLDER
        self.read_only = read_only  # reload finished stages only; write nothing

    def record_path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def partial_path(self, name: str) -> Path:
        return self.folder / f"{name}.partial.pt"

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.record_path(name)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def is_done(self, name: str, key: dict[str, Any]) -> bool:
        """True when ``name`` finished with ``key``; refuses a record made with another key.

        A record of an avda before stage keys named their cache (no ``cache`` in it, with the
        same settings otherwise) may hold another cache's work: it is recomputed, with one
        warning (read-only, ``avda predict``: reused, it is the finished run's own stage). A
        record without a field the store has recorded since for the same features
        (:data:`~avda.cache.store.RECORDED_LATER`) is reused, ``key`` given its recorded
        cache entry."""
        record = self.record(name)
        if record is None and self.read_only:
            raise RunError(
                f"stage {name!r} is not in {self.folder}: the run's stage files are missing "
                "or incomplete; train the run again (avda train --config RUN/config.yaml)"
            )
        if record is None:
            return False
        stored = record["key"]
        wanted = _as_stored(stored, key)
        if stored == wanted:
            return True
        if CACHE_KEY in wanted and CACHE_KEY not in stored:
            if _own_settings(stored) == _own_settings(wanted):
                if self.read_only:
                    return True
                log.warning(
                    "stage %s in %s was recorded by avda %s, which did not record the cache "
                    "its features came from: recomputing it",
                    name,
                    self.folder,
                    record.get("avda_version", "(unknown)"),
                )
                return False
        changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if changed == [CACHE_KEY]:
            raise RunError(
                f"stage {name!r} in {self.folder} was computed from another cache's features "
                f"({_cache_difference(stored[CACHE_KEY], wanted[CACHE_KEY])}); use another run "
                "directory, pass the cache it was computed from, or delete that stage's files "
                "to recompute it"
            )
        raise RunError(
            f"stage {name!r} in {self.folder} was made with other settings "
            f"({', '.join(changed)}); use another run directory, or delete that stage's "
            "files to recompute it"
        )

    def _write_record(self, name: str, key: dict[str, Any], summary: dict[str, Any]) -> None:
        record = {
            "stage": name,
            "key": key,
            "summary": summary,
            "avda_version": avda.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        text = json.dumps(record, indent=2, sort_keys=True)
        atomic_write_text(self.record_path(name), text)
        self.partial_path(name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ arrays
    def save_arrays(
        self,
        name: str,
        arrays: dict[str, np.ndarray],
        key: dict[str, Any],
        summary: dict[str, Any] | None = None,
        *,
        compress: bool = True,
    ) -> None:
        """``arrays`` to ``<name>.npz`` (``compress=False``: stored as is, for large float
        arrays that barely compress), then the record."""
        path = self.folder / f"{name}.npz"
        if self.read_only:  # outputs remade from finished stages (frozen outputs): kept in memory
            return

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                (np.savez_compressed if compress else np.savez)(handle, **arrays)

        atomic_write(path, save)
        self._write_record(name, key, summary or {})

    def matches(self, name: str, key: dict[str, Any]) -> bool:
        """True when ``name`` finished with ``key``; unlike :meth:`is_done` another key is no
        error (for stages that are a pure function of earlier ones and can be remade)."""
        record = self.record(name)
        return record is not None and record["key"] == json.loads(json.dumps(key))

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        return runs.read_arrays(self.folder / f"{name}.npz")

    # ------------------------------------------------------------------ modules
    def save_module(
        self, name: str, module: nn.Module, key: dict[str, Any], summary: dict[str, Any] | None
    ) -> None:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        runs.save_checkpoint(state, self.folder / f"{name}.pt")
        self._write_record(name, key, summary or {})

    def load_module(self, name: str, module: nn.Module) -> nn.Module:
        state = runs.load_checkpoint(self.folder / f"{name}.pt")
        module.load_state_dict(state)
        return module


# A training stage's partial checkpoint (module, optimiser, random states: the stage-5 encoder
# with Adam is ~90 MB at the EPIC-100 defaults) is written at most this often, not after every
# epoch: an interrupted stage loses at most this much work plus an epoch.
PARTIAL_SECONDS = 30.0


def holds_stages(run: str | Path) -> bool:
    """Whether ``RUN/stages/`` holds a stage's files (a record, or a partial checkpoint): the
    stages run alone (audio-adaptive's ``run_stages``), not a user's folder named ``stages``."""
    folder = Path(run) / STAGES_FOLDER
    if not folder.is_dir():
        return False
    for path in folder.iterdir():
        if path.name.endswith(".partial.pt"):
            return True
        if path.suffix == ".json":
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and {"stage", "key"} <= record.keys():
                return True
    return False


@contextmanager
def stage_random_state(seed: int, device: str) -> Iterator[None]:
    """Seed torch for one stage and restore the caller's random state afterwards.

    Each stage then gives the same result whether the stages before it were trained in this
    process or reloaded from disk, and the loop's own random stream is left untouched.
    """
    target = torch.device(device)
    devices = [target.index or 0] if target.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def fit_epochs(
    *,
    name: str,
    stages: StageStore,
    key: dict[str, Any],
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    run_epoch: Callable[[int], dict[str, float]],
    generator: torch.Generator,
    progress: bool = False,
    sinks: MetricSinks | None = None,
) -> list[dict[str, float]]:
    """Train ``module`` for ``epochs`` epochs, checkpointing between epochs (resumable).

    ``run_epoch(epoch)`` trains one epoch (drawing batch orders from ``generator``) and
    returns its mean losses (also streamed to ``sinks`` as ``stage/<name>/<loss>``). A partial
    checkpoint made with the same ``key`` is resumed from; one made with another key is
    discarded. Returns the per-epoch losses of this call.
    """
    from avda._io import progress_bar

    partial = stages.partial_path(name)
    start = 1
    history: list[dict[str, float]] = []
    if partial.exists():
        state = runs.load_checkpoint(partial)
        stored = state.get("key") or {}
        if stored == _as_stored(stored, key):
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start = state["epoch"] + 1
            history = list(state.get("history", []))
            log.info("stage %s: resuming from epoch %d", name, start)
        elif CACHE_KEY in key and CACHE_KEY not in stored:
            log.warning(
                "stage %s: discarding a partial checkpoint of an avda that did not record the "
                "cache its features came from",
                name,
            )
        else:
            log.warning("stage %s: discarding a partial checkpoint made with other settings", name)
    bar = progress_bar(
        range(start, epochs + 1),
        desc=f"stage {name}",
        unit="epoch",
        disable=not progress,
        initial=start - 1,
        total=epochs,
    )
    saved = time.perf_counter()
    for epoch in bar:
        module.train()
        losses = run_epoch(epoch)
        history.append({"epoch": epoch, **losses})
        # A partial checkpoint at most every PARTIAL_SECONDS, never after the last epoch (the
        # caller stores the finished module): resuming from any epoch gives the same result.
        if epoch < epochs and time.perf_counter() - saved >= PARTIAL_SECONDS:
            state = {
                "key": key,
                "module": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch,
                "history": history,
            }
            runs.save_checkpoint(state, partial)
            saved = time.perf_counter()
        if sinks is not None:
            sinks.stage(name, epoch, losses)
        bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.3f}", refresh=False)
    bar.close()
    module.eval()
    return history


__all__ = [
    "StageStore",
    "TrainingContext",
    "cache_identity",
    "fingerprint",
    "fit_epochs",
    "stage_random_state",
]
