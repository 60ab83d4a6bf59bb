"""The training loop: mixed source/target batches from in-memory cached features.

Deterministic for a seed on CPU, resumable from the last finished epoch, and stops with a clear
message when a loss diverges.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import avda
from avda import environment, runs
from avda._io import atomic_write_text, progress_bar, quiet_logs
from avda.cache import FeatureCache
from avda.cache.lock import RUN_LOCK, run_lock
from avda.cache.store import features_record, store_identity
from avda.errors import AvdaError, RunError, TrainingDiverged
from avda.paths import RUN_OUTPUT, check_output_folder, refuse_foreign_folder
from avda.scoring.protocols import set_metrics
from avda.train import setup as setup_lib
from avda.train import sinks as sinks_lib
from avda.train.data import FeatureSet, Task, batch_count
from avda.train.heads._base import Head, HeadConfig, shape_errors
from avda.train.layers import dann_annealing
from avda.train.optim import make_optimizer
from avda.train.stages import TrainingContext, holds_stages

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    run: Path
    metrics: dict[str, float]
    skipped: bool = False


# lr schedules the loop steps after every optimisation step (the others once per epoch)
PER_STEP_SCHEDULES = ("dann", "dann-ta3n")


def ta3n_dann_factor(steps_done: int, total_steps: int, epochs: int) -> float:
    """The lr factor of the original TA3N's ``--lr_adaptive dann`` (``cmhungsteve/TA3N``
    ``main.py``) for the step after ``steps_done`` optimisation steps.

    The authors set ``lr = lr0 / (1 + 10 p) ** 0.75`` *after* each step, with the progress of
    the step just made, ``p = (i + epoch * len) / (epochs * len)``, whose ``epoch`` counts from 1:
    the first step runs at ``lr0``, step ``k >= 1`` at ``dann_annealing((k - 1) / total +
    1 / epochs)``, and ``p`` ends past 1 (``1 + 1 / epochs - 1 / total``).
    """
    if steps_done <= 0:
        return 1.0
    return dann_annealing((steps_done - 1) / max(total_steps, 1) + 1.0 / max(epochs, 1))


def _make_optimizer(head: Head, config: HeadConfig, total_steps: int = 1):
    optimizer = make_optimizer(
        config.optimizer,
        head.parameters(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    if config.lr_schedule == "dann":  # stepped after every optimisation step
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: dann_annealing(step / max(total_steps, 1))
        )
        return optimizer, scheduler
    if config.lr_schedule == "dann-ta3n":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: ta3n_dann_factor(step, total_steps, config.epochs)
        )
        return optimizer, scheduler
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.lr_steps), gamma=config.lr_gamma
    )
    return optimizer, scheduler


def single_clip_view(feature_set: FeatureSet) -> FeatureSet:
    """``feature_set`` with one clip per row: ``(N, K, D)`` -> ``(N * K, 1, D)``, every
    modality aligned to the largest K by position in the segment (a segment-long audio window
    goes with every visual clip). Row ``n * K + k`` is clip ``k`` of segment ``n``."""
    count = max(x.shape[1] for x in feature_set.inputs.values())
    inputs = {}
    for modality, x in feature_set.inputs.items():
        if x.shape[1] == count:  # every clip in its place: a view, no copy (EPIC-100's
            # target_train, 26k x 25 clips, was copied at every evaluation of mean-scores)
            inputs[modality] = x.reshape(-1, 1, x.shape[-1])
            continue
        index = (torch.arange(count) * x.shape[1]) // count  # the clip at each position
        inputs[modality] = x[:, index].reshape(
            -1, 1, x.shape[-1]
        )  # (N, count, D) -> (N*count, 1, D)
    return dataclasses.replace(
        feature_set,
        rows=np.repeat(feature_set.rows, count),
        uids=np.repeat(feature_set.uids, count),
        inputs=inputs,
        labels={t: y.repeat_interleave(count, dim=0) for t, y in feature_set.labels.items()},
        domains=np.repeat(feature_set.domains, count),
        groups=None if feature_set.groups is None else np.repeat(feature_set.groups, count),
    )


def random_clips(
    feature_set: FeatureSet, rows: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """One random clip number per modality and segment of a batch of ``rows`` segments of
    ``feature_set`` (MM-SADA's training sampling; modalities drawn independently, as the code
    draws RGB and flow), for :meth:`FeatureSet.batch`'s ``clips``."""
    return {
        m: torch.randint(0, x.shape[1], (rows,), generator=generator)
        for m, x in feature_set.inputs.items()
    }


def _mean_scores(config: HeadConfig) -> bool:
    return getattr(config, "test_clips", "mean-features") == "mean-scores"


@torch.no_grad()
def predict(head: Head, feature_set: FeatureSet, device: str, batch_size: int = 1024):
    """Scores per task (softmax, or sigmoid for multi-label) and embeddings.

    With ``test_clips="mean-scores"`` each clip is predicted alone and the clips'
    probabilities are averaged per segment (MM-SADA's 5-clip test).
    """
    if _mean_scores(head.config) and len(feature_set):
        count = max(x.shape[1] for x in feature_set.inputs.values())
        per_clip = _predict(head, single_clip_view(feature_set), device, batch_size)
        # (N*K, C) -> (N, K, C) -> mean over the clips
        return {t: v.reshape(len(feature_set), count, -1).mean(1) for t, v in per_clip.items()}
    return _predict(head, feature_set, device, batch_size)


def _predict(head: Head, feature_set: FeatureSet, device: str, batch_size: int):
    head.eval()
    scores: dict[str, list[np.ndarray]] = {t.name: [] for t in head.tasks}
    for index in feature_set.batches(batch_size, shuffle=False):
        inputs, _ = feature_set.batch(index, device)
        output = head(inputs)
        for task in head.tasks:
            logits = output.logits[task.name].float()
            probs = logits.sigmoid() if task.multi_label else logits.softmax(dim=1)
            scores[task.name].append(probs.cpu().numpy())
    return {t: np.concatenate(v) if v else np.zeros((0, 0)) for t, v in scores.items()}


def evaluate_sets(
    head: Head, sets: dict[str, FeatureSet], device: str, adaptation_set: FeatureSet | None = None
):
    metrics: dict[str, float] = {}
    all_scores = {}
    for name, feature_set in sets.items():
        if _mean_scores(head.config):  # statistics (AdaBN) of the single clips it predicts
            head.before_evaluation(
                single_clip_view(feature_set),
                single_clip_view(adaptation_set) if adaptation_set is not None else None,
            )
        else:
            head.before_evaluation(feature_set, adaptation_set)
        scores = predict(head, feature_set, device)
        for task, values in scores.items():
            bad = ~np.isfinite(values).all(axis=1) if values.size else np.zeros(0, bool)
            if bad.any():  # never written, never recorded as complete
                example = feature_set.uids[int(np.argmax(bad))]
                raise TrainingDiverged(
                    f"{type(head).__name__}: its {task} scores on {name} are not finite for "
                    f"{int(bad.sum())} of {len(bad)} segments (e.g. {example}); lower lr "
                    "(--set lr=...) or enable standardize (--set standardize=true)"
                )
        all_scores[name] = scores
        # a multi-label mAP by score_group where the cache has one (max over its rows); with
        # verb and noun, EPIC-100's action top-1/top-5 (the official scorer) too
        metrics.update(
            set_metrics(
                name,
                scores,
                {t.name: feature_set.labels[t.name].numpy() for t in head.tasks},
                multi_label=[t.name for t in head.tasks if t.multi_label],
                groups=feature_set.groups,
            )
        )
    return metrics, all_scores


def train(
    *,
    cache: str | Path,
    head: str,
    source: Sequence[str],
    target: Sequence[str],
    out: str | Path,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    progress: bool = True,
    protocol: str | None = None,
    log: str | Sequence[str] | None = None,  # noqa: A002 - the CLI option's name
) -> TrainResult:
    """Train ``head`` on ``source`` (labelled) and ``target`` (unlabelled) features of ``cache``.

    ``protocol``: a named protocol (:mod:`avda.protocols`) that sets the head's config as its
    paper ran it; ``head`` is then the method's name in that protocol (``source-only`` under
    ``mmsada-epic55`` trains mm-sada without its adaptation terms), recorded as
    ``protocol_role``. ``log``: loggers that stream the ``metrics.jsonl`` records as they are
    written (``"tensorboard"``, ``"wandb"``, ``"mlflow"``; a comma list or a list; see
    :mod:`avda.train.sinks`).
    """
    names = sinks_lib.parse_names(log)
    sinks_lib.check_available(names)  # a missing package: one line before any work
    # -o . or -o ~/Documents: a folder of other files is no run's (it was trained into); a
    # folder of stages run alone (audio-adaptive's run_stages) is the run they are reused in
    run = check_output_folder(out, "-o", *RUN_OUTPUT)  # -o x.zarr: as the CLI
    mine = (runs.CONFIG, runs.STATUS, RUN_LOCK)
    ours = any((run / name).exists() for name in mine) or holds_stages(run)
    refuse_foreign_folder(run, "-o", "an avda run", is_ours=ours, name="run")
    sinks = sinks_lib.MetricSinks(names)
    try:
        # One process trains into a folder at a time (a second one stops with RunBusyError).
        with run_lock(out, what="avda train"):
            return _train(
                cache=cache,
                head=head,
                source=source,
                target=target,
                out=Path(out),
                seed=seed,
                overrides=overrides,
                device=device,
                progress=progress,
                protocol=protocol,
                sinks=sinks,
            )
    finally:
        sinks.close()


def resolved_config(
    setup: setup_lib.RunSetup,
    cache: str | Path,
    source: Sequence[str],
    target: Sequence[str],
    seed: int,
    protocol: str | None = None,
    role: str | None = None,
) -> dict[str, Any]:
    """The configuration a run records in its ``config.yaml``: ``setup``'s head, config and
    tasks for this cache, setting and seed (``role``: the protocol's method name). A run folder
    whose record differs holds another run."""
    resolved = {
        "avda_version": avda.__version__,
        "head": setup.head,
        "head_config": setup.config.to_dict(),
        "cache": str(Path(cache).resolve()),
        "source": list(source),
        "target": list(target),
        "modalities": setup.modalities,
        "tasks": [dataclasses.asdict(t) for t in setup.tasks],
        "seed": seed,
    }
    if protocol is not None:
        resolved.update({"protocol": protocol, "protocol_role": role})
    return resolved


def _train(
    *,
    cache: str | Path,
    head: str,
    source: Sequence[str],
    target: Sequence[str],
    out: Path,
    seed: int,
    overrides: dict[str, Any] | None,
    device: str | None,
    progress: bool,
    protocol: str | None,
    sinks: sinks_lib.MetricSinks,
) -> TrainResult:
    role = head  # with a protocol, its method's name
    finished = runs.is_complete(out)
    # a finished run's warnings (its schedule for this data) were reported when it trained
    with quiet_logs() if finished else contextlib.nullcontext():
        setup = setup_lib.plan(
            cache=cache,
            head=role,
            source=source,
            target=target,
            overrides=overrides,
            device=device,
            protocol=protocol,
        )
    head = setup.head
    store, config, modalities = setup.store, setup.config, setup.modalities
    device = setup.device
    cls = setup.head_class
    uses_target = cls.needs_target(config)

    resolved = resolved_config(setup, cache, source, target, seed, protocol, role)
    if not finished:
        setup.check_head()  # a refused combination leaves no run folder behind
    resume_record = _start_run_folder(out, resolved, store, device, run_data(setup))
    if finished:
        log.info("%s is complete: skipping", out)
        return TrainResult(out, recorded_metrics(out, setup.tasks), True)
    sinks.open(out, resolved)

    torch.manual_seed(seed)
    np.random.seed(seed)
    generator = torch.Generator().manual_seed(seed)
    # a head that never reads the target training set (in training or at evaluation) gets it
    # empty: source-only on EPIC-100 holds 26k target segments' features less
    train_set, target_set, eval_sets, stats = setup.load_sets(
        target=uses_target or cls.adapts_at_evaluation
    )
    inputs = {m: tuple(train_set.inputs[m].shape[1:]) for m in modalities}
    model = setup.build_head(inputs).to(device)
    # attach inputs (CIA's spatial maps), run or reload earlier stages (Audio-Adaptive)
    model.prepare(
        TrainingContext(
            run=out,
            store=store,
            train_set=train_set,
            target_set=target_set,
            eval_sets=eval_sets,
            seed=seed,
            device=device,
            progress=progress,
            sinks=sinks,
        )
    )
    # One small batch of every evaluation set through the head now: a head that cannot run on
    # this cache's layout (clips per modality, spatial maps) fails in seconds, not after training.
    model.check_evaluation(eval_sets or {"source_train": train_set}, device)
    shapes = {k: tuple(x.shape[1:]) for k, x in train_set.inputs.items()}

    def evaluate() -> tuple[dict[str, float], dict[str, Any]]:
        with shape_errors(head, shapes, "evaluate"):
            return evaluate_sets(model, eval_sets, device, target_set)

    steps_per_epoch = max(1, batch_count(len(train_set), config.batch_size))
    total_steps = config.epochs * steps_per_epoch
    optimizer, scheduler = _make_optimizer(model, config, total_steps)

    start_epoch = 1
    checkpoint_path = out / runs.CHECKPOINT
    if checkpoint_path.exists():
        state = runs.load_checkpoint(checkpoint_path)
        load_model_state(model, state, checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        cuda_rng = state.get("cuda_rng")
        if cuda_rng is not None and torch.device(device).type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, torch.device(device))
        generator.set_state(state["generator"])
        start_epoch = state["epoch"] + 1
        runs.truncate_metrics(out, state["epoch"])
        log.info("resuming %s from epoch %d", out, start_epoch)
    else:
        runs.truncate_metrics(out, 0)
    if resume_record is not None:
        atomic_write_text(out / runs.PROVENANCE, json.dumps(resume_record, indent=2))

    target_batch = config.target_batch_size or config.batch_size
    random_clip = getattr(config, "training_clips", "all") == "random"
    autocast = torch.autocast(
        torch.device(device).type, dtype=torch.bfloat16, enabled=config.precision == "bf16"
    )
    metrics: dict[str, float] = {}
    bar = progress_bar(
        range(start_epoch, config.epochs + 1),
        desc=f"train {head}",
        unit="epoch",
        disable=not progress,
        initial=start_epoch - 1,
        total=config.epochs,
    )
    saved = time.perf_counter()
    for epoch in bar:
        model.train()
        began = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]  # the epoch's (its first step's, when per step)
        sums: dict[str, float] = {}
        target_batches = _cycle(target_set, target_batch, generator) if uses_target else None
        for step, index in enumerate(
            train_set.batches(config.batch_size, shuffle=True, generator=generator)
        ):
            progress_fraction = ((epoch - 1) * steps_per_epoch + step) / total_steps
            target_index = next(target_batches) if target_batches is not None else None
            source_clips = target_clips = None
            if random_clip:  # one random clip per modality and segment (MM-SADA's sampling)
                source_clips = random_clips(train_set, len(index), generator)
                if target_index is not None:
                    target_clips = random_clips(target_set, len(target_index), generator)
            source_inputs, source_labels = train_set.batch(index, device, source_clips)
            target_inputs = None
            if target_index is not None:
                target_inputs, _ = target_set.batch(target_index, device, target_clips)
            with autocast, shape_errors(head, shapes, "train"):
                losses = model.training_step(
                    source_inputs, source_labels, target_inputs, progress_fraction
                )
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"{head}: loss became {loss.item()} at epoch {epoch}, step {step}; "
                    "lower lr (--set lr=...) or enable standardize (--set standardize=true)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if config.lr_schedule in PER_STEP_SCHEDULES:
                scheduler.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        if config.lr_schedule not in PER_STEP_SCHEDULES:
            scheduler.step()
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "seconds": round(time.perf_counter() - began, 3),
            **{f"train/{k}": v / steps_per_epoch for k, v in sums.items()},
        }
        evaluating = runs.is_evaluated(epoch, config.epochs, config.eval_every)
        # the last keep_last_predictions evaluations (MM-SADA's last 9 checkpoints)
        window = config.keep_last_predictions * config.eval_every
        keep = evaluating and epoch > config.epochs - window
        if evaluating:
            metrics, epoch_scores = evaluate()
            record.update(metrics)
            if keep:  # RUN/epochs/<epoch>/predictions/<set>.npz
                for name, feature_set in eval_sets.items():
                    labels = {t: y.numpy() for t, y in feature_set.labels.items()}
                    runs.write_predictions(
                        out / runs.EPOCHS / f"{epoch:04d}",
                        name,
                        feature_set.uids,
                        labels,
                        epoch_scores[name],
                        groups=feature_set.groups,
                    )
        runs.append_metrics(out, record)
        sinks.record(record)
        # At each evaluation, the last epoch, and at least every CHECKPOINT_SECONDS: a run of
        # many short epochs (a recipe's steps on a small set) does not spend its time saving.
        if evaluating or time.perf_counter() - saved >= CHECKPOINT_SECONDS:
            _save_checkpoint(
                checkpoint_path,
                model,
                optimizer,
                scheduler,
                generator,
                epoch,
                stats,
                complete=epoch == config.epochs,
                device=device,
            )
            saved = time.perf_counter()
        bar.set_postfix(loss=f"{record.get('train/loss', float('nan')):.3f}", refresh=False)
    bar.close()

    metrics, scores = evaluate()
    for name, feature_set in eval_sets.items():
        runs.write_predictions(
            out,
            name,
            feature_set.uids,
            {t: y.numpy() for t, y in feature_set.labels.items()},
            scores[name],
            groups=feature_set.groups,
        )
    runs.mark_complete(out, {"metrics": metrics, "epochs": config.epochs})
    return TrainResult(out, metrics)


CHECKPOINT_SECONDS = 30.0


def recorded_metrics(out: Path, tasks: Sequence[Task]) -> dict[str, float]:
    """A complete run's ``run.json`` metrics. A run with verb and noun that recorded no action
    columns (trained before avda reported them) gets them, and the others :func:`set_metrics`
    adds, from its stored predictions of each set it scored, as ``avda evaluate --layout runs``
    computes them; ``run.json`` is left as it is."""
    recorded = json.loads((out / runs.STATUS).read_text()).get("metrics", {})
    single = {t.name for t in tasks if not t.multi_label}
    if not {"verb", "noun"} <= single or any("/action/" in key for key in recorded):
        return recorded
    metrics = dict(recorded)
    for name in runs.prediction_sets(out):
        if not any(key.startswith(f"{name}/") for key in recorded):
            continue
        try:
            predictions = runs.read_predictions(out, name)
            added = set_metrics(
                name,
                predictions["scores"],
                predictions["labels"],
                multi_label=[t.name for t in tasks if t.multi_label],
                groups=predictions.get("groups"),
            )
        except (AvdaError, OSError) as exc:  # what it recorded is still the run's result
            log.warning("%s: its %s action columns cannot be computed: %s", out, name, exc)
            continue
        for key, value in added.items():
            metrics.setdefault(key, value)
    return metrics


def run_data(setup: setup_lib.RunSetup) -> dict[str, Any]:
    """What a run reads from its cache: the store's rows and segment fingerprint, each used
    modality's record (backbone, weights, precision...) and a digest of the segments of each
    set it trains and evaluates on. Recorded when the run starts (``provenance.json``,
    ``run_data``); a resume on a cache that reads otherwise is refused."""
    import hashlib

    store = setup.store
    uids = store.segments["uid"].astype(str).to_numpy()
    sets = {"source_train": setup.source_rows, "target_train": setup.target_rows}
    sets.update(setup.eval_rows)
    digest = hashlib.sha256()
    for name in sorted(sets):
        digest.update(f"{name}:{len(sets[name])}\n".encode())
        digest.update("\n".join(uids[np.asarray(sets[name], dtype=np.int64)]).encode())
    return {
        "num_segments": store.num_segments,
        "manifest_sha256": store.provenance.get("manifest_sha256"),
        "modalities": {m: features_record(store.modality_info(m)) for m in setup.modalities},
        "segments_sha256": digest.hexdigest(),
        # each training set's own digest: `avda predict` checks the rows an adapting head
        # normalises with at evaluation are still the run's (evaluation rows may be added)
        "training_sets_sha256": {
            name: rows_digest(uids, sets[name]) for name in ("source_train", "target_train")
        },
    }


def rows_digest(uids: np.ndarray, rows: np.ndarray) -> str:
    """sha256 of the uids of ``rows``, in order."""
    import hashlib

    return hashlib.sha256("\n".join(uids[np.asarray(rows, dtype=np.int64)]).encode()).hexdigest()


def _data_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two :func:`run_data` records, in words."""
    changes = []
    if recorded.get("num_segments") != current.get("num_segments"):
        changes.append(f"{recorded.get('num_segments')} -> {current.get('num_segments')} rows")
    elif recorded.get("manifest_sha256") != current.get("manifest_sha256"):
        changes.append("its segment table")
    for modality, info in (recorded.get("modalities") or {}).items():
        # a run recorded before run_data left finished_rows out: not how features were made
        info = features_record(info)
        now = (current.get("modalities") or {}).get(modality)
        if now != info:
            keys = sorted(k for k in {*info, *(now or {})} if info.get(k) != (now or {}).get(k))
            shown = ", ".join(f"{k} {info.get(k)} -> {(now or {}).get(k)}" for k in keys[:2])
            changes.append(f"{modality} features ({shown})")
    if not changes and recorded.get("segments_sha256") != current.get("segments_sha256"):
        changes.append("the segments it trains or evaluates on (rows extracted, failed or added)")
    return changes


def _but_version(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "avda_version"}


def _trained(out: Path) -> bool:
    """Whether the run folder holds trained work: a checkpoint or a metrics record (the loop
    empties ``metrics.jsonl`` when it starts: an empty one is a run refused in its first
    epoch)."""
    metrics = out / runs.METRICS
    return (out / runs.CHECKPOINT).exists() or (metrics.exists() and metrics.stat().st_size > 0)


def _start_run_folder(
    out: Path,
    resolved: dict[str, Any],
    store: FeatureCache,
    device: str,
    data: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Check ``out`` against this run (same cache, same configuration, and for a resume the
    same data: ``data``, :func:`run_data`) and write its ``config.yaml`` and
    ``provenance.json``. A complete run with the same configuration is left as it is. Returns
    the provenance record of a resume, written once the run's own files have loaded (None for
    a new run)."""
    check_same_cache(out, store)
    if runs.is_complete(out):
        recorded = recorded_config(out)
        # A finished run is the same run whichever avda version trained it (it is skipped);
        # an unfinished one is resumed only by the version that started it (below).
        if _but_version(recorded) != _but_version(resolved):
            raise RunError(
                f"{out} holds a finished run with another configuration "
                f"({config_difference(recorded, resolved)}); use another -o"
            )
        return None
    if (out / runs.CONFIG).exists() and (recorded := recorded_config(out)) != resolved:
        if _trained(out):
            raise RunError(
                f"{out} holds an unfinished run with another configuration "
                f"({config_difference(recorded, resolved)}); use another -o or remove it"
            )
        # A run refused before its first epoch (e.g. a bad setting): nothing trained, replace it.
        log.info("%s: replacing the configuration of a run that never trained", out)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_config(out, resolved)
    if not _trained(out) or not (out / runs.PROVENANCE).exists():
        # Written when the run starts; a resume keeps the record of the cache it started on
        # and adds the environment it went on in.
        provenance = {**store.provenance, "environment": environment.describe(device)}
        if data is not None:
            provenance["run_data"] = data
        atomic_write_text(out / runs.PROVENANCE, json.dumps(provenance, indent=2))
        return None
    # Recorded once the run's own files (stage files, checkpoint) have loaded: a resume
    # refused on a file it cannot trust leaves the run folder as it was.
    provenance = runs.read_provenance(out) or {}
    recorded = provenance.get("run_data")
    if data is not None and isinstance(recorded, dict):
        changes = _data_changes(recorded, json.loads(json.dumps(data)))
        if changes:
            raise RunError(
                f"{out} was started on {store.path} before its {'; '.join(changes)} changed: "
                "resuming would train the rest on other data; to start fresh use "
                f"another -o or remove {out}; to continue it, restore the cache as it was"
            )
    resumed = provenance.get("resumed") if isinstance(provenance.get("resumed"), list) else []
    provenance["resumed"] = [*resumed, environment.describe(device)]
    return provenance


def recorded_config(run: Path) -> dict[str, Any]:
    """``run``'s ``config.yaml`` with the head-config fields added since it was written filled
    in with the values it was trained with (:meth:`HeadConfig.from_stored`): a run recorded
    before a field existed is the same run as one that records the field's default."""
    recorded = runs.read_config(run)
    stored = recorded.get("head_config")
    if not isinstance(stored, dict):
        return recorded
    from avda.train import heads as heads_lib

    try:
        full = heads_lib.config_class(str(recorded.get("head"))).from_stored(stored).to_dict()
    except (AvdaError, TypeError, ValueError):  # compared as it is: it differs, and says why
        return recorded
    return {**recorded, "head_config": {**full, **stored}}


def config_difference(recorded: dict[str, Any], wanted: dict[str, Any], shown: int = 4) -> str:
    """The fields where two run configurations differ, as ``field: the run's -> this one``
    (nested fields dotted: ``head_config.lr``), the first ``shown`` of them and a count."""

    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                out.update(flat(item, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: value}

    old, new = flat(recorded), flat(wanted)
    missing = object()
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k, missing) != new.get(k, missing)]
    if keys and "avda_version" in keys and len(keys) > 1:
        keys.remove("avda_version")  # the version alone is not why; keep it last
        keys.append("avda_version")

    def value(config: dict[str, Any], values: dict[str, Any], key: str) -> str:
        if key not in values:
            return "(none)"
        meant = _unset_meaning(config, key, values[key])
        return repr(values[key]) if meant is None else meant

    parts = [
        f"{k}: the run's {value(recorded, old, k)} -> {value(wanted, new, k)}" for k in keys[:shown]
    ]
    more = f"; and {len(keys) - shown} more" if len(keys) > shown else ""
    return "; ".join(parts) + more if parts else "no field differs"


def _unset_meaning(config: dict[str, Any], key: str, value: Any) -> str | None:
    """A head field left at its "unset" value (``modalities: []``: every modality in the
    cache; ``target_batch_size: 0``: ``batch_size``) as what the run used, e.g. ``['audio',
    'rgb'] (unset: every modality)``; None for any other value. A refusal that showed the
    ``[]`` read as if the run had used no modality."""
    head = config.get("head_config") or {}
    modalities = list(config.get("modalities") or [])
    if key == "head_config.modalities" and not value and modalities:
        return f"{modalities!r} (unset: every modality)"
    if key == "head_config.tasks" and not value and config.get("tasks"):
        names = [task.get("name") for task in config["tasks"] if isinstance(task, dict)]
        return f"{names!r} (unset: every task)"
    if key == "head_config.target_batch_size" and value == 0 and "batch_size" in head:
        return f"{head['batch_size']!r} (unset: batch_size)"
    if key == "head_config.visual_modalities" and not value and modalities:
        from avda.train.heads._base import ordered_modalities

        audio = head.get("audio_modality", "audio")
        visual = ordered_modalities([m for m in modalities if m != audio])
        return f"{visual!r} (unset: every modality but {audio})"
    return None


def same_cache(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether two cache provenances describe the same store: the same ``cache_id`` (written
    once at creation), or for stores made before it, the same creation time."""
    return store_identity(recorded) == store_identity(current)


def _describe(provenance: dict[str, Any]) -> str:
    ident = provenance.get("cache_id")
    return f"created {provenance.get('created')}" + (f", id {ident}" if ident else "")


def check_same_cache(out: Path, store: FeatureCache) -> None:
    """Refuse (RunError) a run directory that trained, or finished, on another cache than
    ``store``: the cache at its path was rebuilt since (docs/security.md)."""
    started = runs.is_complete(out) or any(
        (out / name).exists() for name in (runs.CHECKPOINT, runs.METRICS)
    )
    if not started:
        return
    recorded = runs.read_provenance(out)
    if recorded is None or same_cache(recorded, store.provenance):
        return
    config = runs.read_config(out) if (out / runs.CONFIG).exists() else {}
    path = config.get("cache") if isinstance(config, dict) else None
    at = f"at {path}, " if path else ""
    raise RunError(
        f"{out} was trained on another cache than the one now at {store.path.resolve()} "
        f"(the run's: {at}{_describe(recorded)}; now: {_describe(store.provenance)}; another "
        f"cache, or rebuilt since?); to start fresh use another -o or remove {out}; to "
        "continue it, pass or restore the cache it trained on"
    )


def load_model_state(model, state: dict[str, Any], path: Path) -> None:
    """Load a loop checkpoint into ``model``: all of it, or all but the submodules it names as
    ``"omitted"`` (which the head's ``prepare`` has loaded from the run's stage files)."""
    omitted = list(state.get("omitted") or [])
    if not omitted:
        model.load_state_dict(state["model"])
        return
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    absent = [k for k in missing if not _stored_elsewhere(k, omitted)]
    if absent or unexpected:
        raise RunError(
            f"{path} does not fit the {type(model).__name__} head: missing {absent[:3]}, "
            f"unexpected {unexpected[:3]}; to start fresh use another -o or remove it"
        )


def _cycle(feature_set: FeatureSet, batch_size: int, generator: torch.Generator):
    while True:
        yield from feature_set.batches(batch_size, shuffle=True, generator=generator)


def _stored_elsewhere(key: str, submodules: list[str]) -> bool:
    return any(key.startswith(f"{name}.") for name in submodules)


def _accelerator_rng_state(device: str) -> torch.Tensor | None:
    """The CUDA generator's state of ``device`` (dropout and other on-device draws), or None
    on a CPU."""
    where = torch.device(device)
    return torch.cuda.get_rng_state(where) if where.type == "cuda" else None


def _save_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    generator,
    epoch: int,
    stats,
    *,
    complete: bool,
    device: str = "cpu",
) -> None:
    """The loop's state after ``epoch``. Before the last epoch (``complete=False``) the head's
    ``stored_submodules`` (frozen, in the run's stage files) are left out and named under
    ``"omitted"``: a staged head's checkpoint is then its trainable part (audio-adaptive: the
    recognizers, not the 152 MB of frozen encoders, rewritten after every epoch)."""
    omitted = [] if complete else list(model.stored_submodules)
    state = model.state_dict()
    if omitted:
        state = {k: v for k, v in state.items() if not _stored_elsewhere(k, omitted)}
    runs.save_checkpoint(
        {
            "model": state,
            "omitted": omitted,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            # on a GPU, dropout draws from the device's generator: without its state a resumed
            # run would not repeat the uninterrupted one
            "cuda_rng": _accelerator_rng_state(device),
            "generator": generator.get_state(),
            "epoch": epoch,
            "standardize": stats,
        },
        path,
    )


__all__ = ["TrainResult", "Task", "evaluate_sets", "load_model_state", "predict", "train"]
