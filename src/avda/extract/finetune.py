"""``avda finetune``: train a backbone plus a linear classifier on labelled source clips.

MM-SADA fine-tunes I3D end to end on the source domain, and TBN / SlowFast are trained on the
source domain before features are extracted. This module does that for any registered backbone:

    source segments -> SegmentDataset (decode, random clip placement per epoch) -> flip
        -> model_input (the backbone's input contract) -> backbone.forward_features -> Linear
        -> cross-entropy on verb_class

Mixed precision (bf16 autocast) and channels-last on GPU, gradient accumulation for small GPUs,
a resumable checkpoint after every epoch (``OUT.partial.pt``), and at the end ``OUT`` holds the
backbone's plain state dict, which ``avda extract --weights OUT`` loads unchanged; the
classifier and the run's metadata go to ``OUT.classifier.pt`` and ``OUT.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from avda import runs
from avda._io import atomic_write_text, progress_bar
from avda.config import Config
from avda.data_manifests import schema as manifest_schema
from avda.devices import resolve_device
from avda.errors import ConfigError, ManifestError, MediaError
from avda.extract import backbones, runner
from avda.extract.backbones.weights import advising
from avda.extract.inference import memory_format
from avda.extract.inputs import (
    DecodingLoader,
    InputPaths,
    Relayed,
    SegmentDataset,
    relay,
    worker_init,
)
from avda.extract.sampling import Recipe
from avda.extract.transforms import model_input

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig(Config):
    """Optimisation of ``avda finetune`` (defaults: MM-SADA's SGD, momentum 0.9)."""

    epochs: int = 10
    batch_size: int = 8  # clips per forward pass
    accumulate: int = 1  # forward passes per optimiser step (effective batch = product)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-7
    flip: bool = True  # random horizontal flip (flow: u is inverted, 255 - u)
    workers: int = 2
    seed: int = 0
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)


@dataclasses.dataclass
class FinetuneResult:
    weights: Path
    epochs: int
    history: list[dict[str, float]]
    seconds: float
    # source segments whose inputs failed in the last epoch (uid, video_id, error): trained
    # without; listed in ``<out>.failures.csv``
    failures: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Source segments the last epoch trained without (their inputs failed)."""
        return int(self.history[-1].get("failed_segments", 0)) if self.history else 0


# Settings that do not change the result: how many epochs (a resume may train longer), how
# clips are loaded.
_NOT_IN_KEY = ("epochs", "workers")
# The columns of a training segment that decide its clips and label.
_SEGMENT_COLUMNS = (
    "uid", "video_id", "video_path", "participant_id", "start_sec", "stop_sec", "start_frame",
    "stop_frame", "fps", "verb_class",
)  # fmt: skip


BATCHES = "clips of batch_size segments"  # the key's record of how batches are drawn


def _warn_one_segment_batches(what: Path, recorded: Any, when: str) -> None:
    """Warn that the run ``recorded`` (a key an avda before 2026-12-07 wrote) drew each batch
    from one segment's clips (one label, one segment's BatchNorm statistics)."""
    if isinstance(recorded, dict) and "batches" not in recorded:
        log.warning(
            "%s was fine-tuned by an avda whose batches held one segment's clips (before "
            "2026-12-07; now clips of batch_size segments, as MM-SADA's); %s; remove it to "
            "fine-tune again",
            *(what, when),
        )


def _run_key(
    segments: pd.DataFrame,
    rows: np.ndarray,
    num_classes: int,
    backbone: str,
    modality: str,
    weights: str | Path | None,
    source: list[str],
    recipe: Recipe,
    config: FinetuneConfig,
    inputs: InputPaths | None = None,
) -> dict[str, Any]:
    """What a fine-tuning run is: a resume or a finished run with another key is another run.
    The training segments by what decides their clips and labels (a digest), the initial
    weights by content, the input as a store records it (videos or frame folders, their JPEG
    decoding)."""
    from avda._io import sha256_file

    columns = [c for c in _SEGMENT_COLUMNS if c in segments.columns]
    table = segments.iloc[rows][columns].astype(str)
    digest = hashlib.sha256("\n".join(map(",".join, table.to_numpy().tolist())).encode())
    return {
        "backbone": backbone,
        "modality": modality,
        "init_weights_sha256": sha256_file(weights) if weights else None,
        "source": sorted(source),
        "segments": digest.hexdigest(),
        "num_classes": num_classes,
        "recipe": json.loads(json.dumps(recipe.to_dict(), default=str)),
        "config": {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_KEY},
        "input": inputs.provenance(modality) if inputs is not None else None,
        "batches": BATCHES,
    }


def _current_form(recorded: Any, wanted: dict[str, Any] | None = None) -> Any:
    """A recorded key with the recipe fields an older avda did not record at their defaults
    (``crop_offset``), as :func:`avda.extract.runner.recipe_differences` reads a store's
    recipe: the same run is not refused after an upgrade. A key recorded before the input
    was (2026-12-07) takes ``wanted``'s: such runs resume unchecked on that point."""
    if isinstance(recorded, dict) and "input" not in recorded and wanted is not None:
        recorded = {**recorded, "input": wanted.get("input")}
    if isinstance(recorded, dict) and "batches" not in recorded and wanted is not None:
        # before 2026-12-07 a batch held one segment's clips: such runs are kept and resumed,
        # with a warning (_warn_one_segment_batches)
        recorded = {**recorded, "batches": wanted.get("batches")}
    if not isinstance(recorded, dict) or not isinstance(recorded.get("recipe"), dict):
        return recorded
    try:
        recipe = Recipe.from_dict(recorded["recipe"])
    except (ConfigError, TypeError):
        return recorded
    return {**recorded, "recipe": json.loads(json.dumps(recipe.to_dict(), default=str))}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    # Nested parts field by field: a whole input cut at 40 characters hid what differed (its
    # jpeg_dct comes after its source and flow_stride). An input that is not a mapping on
    # both sides is shown whole.
    inputs_nested = isinstance(old.get("input"), dict) and isinstance(new.get("input"), dict)

    def flat(key: dict[str, Any]) -> dict[str, Any]:
        nested = {f"recipe.{k}": v for k, v in (key.get("recipe") or {}).items()}
        if inputs_nested:
            given = dict(key["input"])
            if given.get("source") in ("frames", "flow-frames"):
                given.setdefault("jpeg_dct", "accurate")  # recorded only when fast
            nested.update({f"input.{k}": v for k, v in given.items()})
        return {**key, **(key.get("config") or {}), **nested}

    hidden = ("config", "recipe", "input") if inputs_nested else ("config", "recipe")
    flat_old, flat_new = flat(old), flat(new)
    names = [
        k for k in dict.fromkeys([*flat_old, *flat_new])
        if k not in hidden and flat_old.get(k) != flat_new.get(k)
    ]  # fmt: skip
    shown = [
        "the training segments (their videos, times or labels)"
        if k == "segments"
        else f"{k} {flat_old.get(k)!r:.40} -> {flat_new.get(k)!r:.40}"
        for k in names[:3]
    ]
    return "; ".join(shown) + (f"; and {len(names) - 3} more" if len(names) > 3 else "")


def _check_resume(
    partial: Path, recorded: Any, key: dict[str, Any], trained: int, epochs: int
) -> None:
    """Refuse to resume a partial run started with other settings (it would go on with its
    own: the optimiser state brings back its lr, the weights their modality...), or one that
    has trained more epochs than asked (its weights would be recorded as ``epochs``')."""
    recorded = _current_form(recorded, key)
    if not isinstance(recorded, dict):
        raise ConfigError(
            f"{partial} records no settings (an earlier avda wrote it), so it cannot be "
            f"resumed safely; remove {partial} to start over"
        )
    if recorded != key:
        raise ConfigError(
            f"{partial} was started with other settings ({_differences(recorded, key)}); "
            f"rerun with its settings to resume it, or remove {partial} to start over"
        )
    if trained > epochs:
        raise ConfigError(
            f"{partial} has trained {trained} epochs, more than --epochs {epochs}; rerun with "
            f"--epochs {trained} or more to finish it, or remove {partial} to start over"
        )


def _finished(
    out: Path, key: dict[str, Any], epochs: int, partial: Path
) -> list[dict[str, float]] | None:
    """The history of a finished run at ``out`` with this key and number of epochs (None when
    there is none); a finished run with other settings or epochs is refused, not overwritten.
    ``out`` without its record beside a ``partial`` checkpoint is a run killed while writing
    its results (the partial goes last): not finished, it resumes from the partial."""
    meta_path = out.with_name(out.name + ".json")
    if not out.exists() or (not meta_path.exists() and partial.exists()):
        return None
    if not meta_path.exists():
        raise ConfigError(
            f"{out} exists without {meta_path.name}: not a fine-tuning avda finished (a "
            "downloaded checkpoint?); give another -o, or remove it to train there"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    recorded = _current_form(meta.get("key"), key) if isinstance(meta, dict) else None
    trained = (meta.get("config") or {}).get("epochs") if isinstance(meta, dict) else None
    if recorded == key and trained == epochs:
        _warn_one_segment_batches(out, meta.get("key"), "its weights are kept")
        return list(meta.get("history") or [])
    if recorded == key:
        why = f"for {trained} epochs, not {epochs}"
    elif isinstance(recorded, dict):
        why = f"with other settings ({_differences(recorded, key)})"
    else:
        why = "with settings it does not record (an older avda)"
    raise ConfigError(
        f"{out} holds weights fine-tuned {why}; give another -o (to go on from them: --weights "
        f"{out}, a new run), or remove {out}, {meta_path} and "
        f"{out.with_name(out.name + '.classifier.pt')} to train it again"
    )


def _source_rows(manifest: pd.DataFrame, source: list[str]) -> np.ndarray:
    known = sorted(manifest["domain"].dropna().unique())
    for domain in source:
        if domain not in known:
            raise ConfigError(f"unknown source domain {domain!r}; the manifest has: {known}")
    labels = pd.to_numeric(manifest.get("verb_class"), errors="coerce")
    mask = manifest["domain"].isin(source) & (manifest["split"] == "train") & labels.notna()
    rows = np.flatnonzero(mask.to_numpy())
    if len(rows) == 0:
        raise ManifestError(
            f"no labelled training segments (split train, verb_class set) in domain(s) {source}"
        )
    return rows


# Without a class table, a classifier of more than this many outputs per class the manifest
# labels is taken for ids that do not number the classes from 0 (a 99,999 among 8 classes).
SPARSE_OUTPUTS_PER_CLASS = 10


def _num_classes(
    segments: pd.DataFrame, labels: np.ndarray, class_names: Sequence[str] | None
) -> int:
    """The classifier's outputs: the manifest's largest ``verb_class`` + 1. An id outside the
    manifest's class table (``class_names``) is refused; without one, ids that leave most
    outputs without a class (:data:`SPARSE_OUTPUTS_PER_CLASS`) are warned of."""
    labelled = ~np.isnan(labels)
    count = int(np.nanmax(labels)) + 1
    if class_names is not None and count > len(class_names):
        row = int(np.flatnonzero(labelled & (labels >= len(class_names)))[0])
        raise ManifestError(
            f"verb_class {int(labels[row])} of segment {segments['uid'].iloc[row]} is outside "
            f"the manifest's class table of {len(class_names)} verb classes (its .build.json): "
            "fix the id, or rebuild the manifest with the class table it comes from"
        )
    distinct = len(np.unique(labels[labelled]))
    if class_names is None and count > SPARSE_OUTPUTS_PER_CLASS * distinct:
        log.warning(
            "the classifier gets %d outputs (the largest verb_class + 1) for the %d classes "
            "the manifest labels: ids should number the classes from 0 (renumber them, or "
            "build the manifest with its class table: `avda manifest build`)",
            *(count, distinct),
        )
    return count


def _flip(clips: torch.Tensor, modality: str, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip of uint8 clips ``(B, T, H, W, C)``; flow u becomes 255 - u."""
    chosen = torch.rand(clips.shape[0], generator=generator) < 0.5
    if not chosen.any():
        return clips
    flipped = clips[chosen].flip(3)
    if modality == "flow":
        flipped[..., 0] = 255 - flipped[..., 0]
    clips = clips.clone()
    clips[chosen] = flipped
    return clips


def _batches(items: list, batch_size: int):
    """The segments' clips in (clips, labels) batches of at most ``batch_size``, interleaved:
    clip 0 of every segment, then clip 1 of every segment..., so that a batch holds clips of
    ``min(batch_size, len(items))`` different segments, as the authors' batches of segments
    do. (Segment after segment, a batch of 8 from ``mmsada-train``'s 10 clips per segment was 8
    windows of one segment and one label: one segment's BatchNorm statistics and gradient.)"""
    order = [
        (x[k], label)
        for k in range(max((len(x) for x, _ in items), default=0))
        for x, label in items
        if k < len(x)
    ]
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        yield torch.stack([c for c, _ in chunk]), torch.tensor([label for _, label in chunk])


def finetune(
    manifest: pd.DataFrame,
    *,
    inputs: InputPaths,
    backbone: str,
    modality: str,
    source: list[str],
    recipe: Recipe,
    out: str | Path,
    weights: str | Path | None = None,
    config: FinetuneConfig | None = None,
    device: str | None = None,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
) -> FinetuneResult:
    """Fine-tune ``backbone`` on the labelled ``source`` training segments of ``manifest``.

    ``class_names``: the verb classes in id order (the manifest's class table,
    ``<manifest>.build.json``); a ``verb_class`` outside it is refused.

    One process writes ``out`` at a time: it holds ``<out>.lock`` (:func:`avda.cache.lock.
    output_lock`) while it trains, resumes or checks a finished run; a second one is refused
    with :class:`avda.cache.lock.RunBusyError` naming the holder."""
    from avda.cache.lock import lock_path, output_lock

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock, partial = lock_path(out, replaced=True), out.with_name(out.name + ".partial.pt")
    created, there = not lock.exists(), (out.exists(), partial.exists())
    finished = False

    def made_nothing() -> bool:  # stopped before it made a file: leave no lock file either
        return not finished and created and (out.exists(), partial.exists()) == there

    # deleted by the holder while it holds it (a refused process holds nothing, deletes none)
    with output_lock(out, what="avda finetune", remove=made_nothing):
        result = _finetune(
            manifest, inputs=inputs, backbone=backbone, modality=modality, source=source,
            recipe=recipe, out=out, weights=weights, config=config, device=device,
            progress=progress, class_names=class_names,
        )  # fmt: skip
        finished = True
        return result


def _finetune(
    manifest: pd.DataFrame,
    *,
    inputs: InputPaths,
    backbone: str,
    modality: str,
    source: list[str],
    recipe: Recipe,
    out: Path,
    weights: str | Path | None,
    config: FinetuneConfig | None,
    device: str | None,
    progress: bool,
    class_names: Sequence[str] | None,
) -> FinetuneResult:
    began = time.perf_counter()
    config = config or FinetuneConfig()
    device = resolve_device(device)
    cuda = device.startswith("cuda")
    segments = manifest_schema.normalise(manifest)
    rows = _source_rows(segments, source)
    labels = pd.to_numeric(segments["verb_class"], errors="coerce").to_numpy()
    num_classes = _num_classes(segments, labels, class_names)

    torch.manual_seed(config.seed)
    with advising("finetune"):  # a wrong checkpoint's advice names finetune's options
        model = backbones.create(backbone, modality=modality, weights=weights)
    runner.check_recipe_fits(model, modality, backbone, recipe, maps=False)  # before decoding
    inputs.check([modality])  # after the backbone's own refusal of the modality
    inputs.check_rates(segments.iloc[rows], [modality])
    classifier = nn.Linear(model.num_features, num_classes)
    model.train().to(device)
    classifier.to(device)
    if cuda:
        model.to(memory_format=memory_format(model.input_spec))
    parameters = [*model.parameters(), *classifier.parameters()]
    optimizer = torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)

    partial = out.with_name(out.name + ".partial.pt")
    key = _run_key(segments, rows, num_classes, backbone, modality, weights, source, recipe,
                   config, inputs)  # fmt: skip
    done = _finished(out, key, config.epochs, partial)
    if done is not None:
        log.info("%s is fine-tuned with these settings already: nothing to do", out)
        partial.unlink(missing_ok=True)  # a crash after OUT.json may have left it
        return FinetuneResult(out, config.epochs, done, time.perf_counter() - began)
    history: list[dict[str, float]] = []
    start_epoch = 1
    if partial.exists():
        state = runs.load_checkpoint(partial)
        _check_resume(partial, state.get("key"), key, int(state["epoch"]), config.epochs)
        _warn_one_segment_batches(
            partial, state.get("key"), f"its epochs after {int(state['epoch'])} will not"
        )
        model.load_state_dict(state["backbone"])
        classifier.load_state_dict(state["classifier"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        log.info("resuming fine-tuning from %s at epoch %d", partial, start_epoch)

    audio_recipe = model.spectrogram_recipe
    visual = modality != "audio"
    logged: set = set()  # the decoding workers' log records logged so far
    failed: list[tuple[str, str, str]] = []  # the last epoch's failed segments
    for epoch in range(start_epoch, config.epochs + 1):
        # A new seed per epoch: random clip placements differ from epoch to epoch.
        epoch_recipe = recipe.replace(seed=config.seed * 1000 + epoch)
        order = rows[torch.randperm(len(rows), generator=generator).numpy()]
        dataset = SegmentDataset(
            segments, order, inputs, epoch_recipe, modality, model.input_spec, audio_recipe
        )
        loader = DecodingLoader(
            Relayed(dataset),  # the workers' warnings, logged once for the whole fine-tuning
            batch_size=None,
            num_workers=config.workers,
            worker_init_fn=worker_init if config.workers else None,
            prefetch_factor=4 if config.workers else None,
        )
        totals = {"loss": 0.0, "correct": 0.0, "clips": 0.0}

        # The bar counts clips trained, not segments decoded: a batch's segments are decoded
        # before it trains, and with fewer segments than --batch-size every step came after
        # a bar of decoded segments read 100% (minutes of silence on a CPU). Every decoded
        # segment gives the recipe's K clips, however short (its clips reach past it, as the
        # store's (N, K, D) rows need); a failed one gives none.
        per_segment = recipe.num_clips if visual else recipe.num_audio_windows
        bar = progress_bar(
            total=len(order) * per_segment,
            desc=f"finetune epoch {epoch}",
            unit="clip",
            disable=not progress,
        )

        def train_on(
            items: list, step: int, totals: dict[str, float] = totals, bar: Any = bar
        ) -> int:
            for clips, target in _batches(items, config.batch_size):
                step = _step(model, classifier, optimizer, clips, target, totals, step, config,
                             modality, visual, device, generator, recipe)  # fmt: skip
                bar.update(len(target))
            return step

        failed = []
        pending: list[tuple[torch.Tensor, int]] = []
        step = 0
        optimizer.zero_grad(set_to_none=True)
        with bar:
            for (row, x, _, error), records in loader:
                relay(records, logged)
                if x is None:
                    uid = str(segments["uid"].iloc[row])
                    failed.append((uid, str(segments["video_id"].iloc[row]), error))
                    log.warning("segment %s skipped: %s", uid, error)
                    bar.total -= per_segment  # no clip of it will train
                    bar.refresh()
                    continue
                pending.append((x, int(labels[row])))
                if len(pending) < config.batch_size:  # a batch's clips from batch_size segments
                    continue
                step = train_on(pending, step)
                pending = []
            step = train_on(pending, step)
        if step % config.accumulate:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not totals["clips"]:  # nothing trained: the initial weights must not be stored
            uid, _, why = failed[0]
            raise MediaError(
                f"fine-tuning trained on no clip in epoch {epoch}: the inputs of all "
                f"{len(failed)} source segments failed ({uid}: {why}); fix them (`avda "
                "manifest validate --videos DIR` checks the videos)"
            )
        clips_seen = totals["clips"]
        record = {
            "epoch": epoch,
            "loss": totals["loss"] / clips_seen,
            "accuracy": totals["correct"] / clips_seen,
            "failed_segments": len(failed),
        }
        if not math.isfinite(record["loss"]):
            raise ConfigError(f"fine-tuning diverged at epoch {epoch}; lower --lr")
        history.append(record)
        log.info(
            "finetune epoch %d: loss %.4f, accuracy %.3f", epoch, record["loss"], record["accuracy"]
        )
        _save_partial(partial, model, classifier, optimizer, generator, epoch, history, key)

    model.eval()
    runs.save_checkpoint({k: v.cpu() for k, v in model.state_dict().items()}, out)
    runs.save_checkpoint(
        {k: v.cpu() for k, v in classifier.state_dict().items()},
        out.with_name(out.name + ".classifier.pt"),
    )
    from avda._io import sha256_file

    meta: dict[str, Any] = {
        "backbone": backbone,
        "modality": modality,
        # absolute, as a store records its weights: a relative path means nothing elsewhere
        "init_weights": str(Path(weights).absolute()) if weights else None,
        "weights_sha256": sha256_file(out),  # what OUT holds: a store names the run by it
        "source": source,
        "recipe": recipe.name,
        "num_classes": num_classes,
        "config": config.to_dict(),
        "history": history,
        "key": key,
    }
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps(meta, indent=2))
    if start_epoch <= config.epochs:  # an epoch ran here: its failures are the list
        _write_failures(out, failed)
    partial.unlink(missing_ok=True)
    return FinetuneResult(out, config.epochs, history, time.perf_counter() - began, failed)


def failures_path(out: Path) -> Path:
    """``<out>.failures.csv``: the source segments a fine-tuning trained without."""
    return out.with_name(out.name + ".failures.csv")


def _write_failures(out: Path, failed: list[tuple[str, str, str]]) -> None:
    path = failures_path(out)
    if not failed:
        path.unlink(missing_ok=True)
        return
    text = pd.DataFrame(failed, columns=["uid", "video_id", "error"]).to_csv(index=False)
    atomic_write_text(path, text)


def _step(
    model,
    classifier,
    optimizer,
    clips,
    target,
    totals,
    step,
    config,
    modality,
    visual,
    device,
    generator,
    recipe,
) -> int:
    if visual:
        if config.flip:
            clips = _flip(clips, modality, generator)
        x = model_input(clips, model.input_spec, normalisation=recipe.pixel_normalisation)
    else:
        x = clips
    if isinstance(x, list):
        x = [pathway.to(device, non_blocking=True) for pathway in x]
    else:
        x = x.to(device, non_blocking=True)
    target = target.to(device)
    autocast = device.startswith("cuda") and config.amp
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = classifier(model.forward_features(x))
        loss = F.cross_entropy(logits.float(), target)
    (loss / config.accumulate).backward()
    step += 1
    if step % config.accumulate == 0:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    totals["loss"] += float(loss.detach()) * len(target)
    totals["correct"] += float((logits.argmax(1) == target).sum())
    totals["clips"] += len(target)
    return step


def _save_partial(path, model, classifier, optimizer, generator, epoch, history, key) -> None:
    runs.save_checkpoint(
        {
            "key": key,
            "backbone": model.state_dict(),
            "classifier": classifier.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "history": history,
        },
        path,
    )
