"""Audio-Adaptive stages 1..n alone, without the recognizer (``avda train`` runs them first).

Kept apart from :mod:`avda.train.audio_adaptive.pipeline` so that the pipeline (which the head
imports) does not import the run set-up (which imports the heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from avda.train.audio_adaptive.pipeline import AudioAdaptiveStages
from avda.train.heads._base import shape_errors
from avda.train.setup import plan
from avda.train.stages import TrainingContext


def run_stages(
    *,
    cache: str | Path,
    source: Sequence[str],
    target: Sequence[str],
    out: str | Path,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    until: str = "pseudo-labels",
    device: str | None = None,
    progress: bool = True,
    protocol: str | None = None,
) -> AudioAdaptiveStages:
    """Run Audio-Adaptive stages 1..``until`` into ``out/stages`` without the recognizer.

    The stages are the ones ``avda train --head audio-adaptive -o OUT`` runs first; with the same
    cache, domains, seed, settings and ``protocol`` (its ``audio-adaptive`` method) a later
    ``avda train`` reuses them.
    """
    # the loop's set-up (rows, config for this data, statistics), so the stages match a full run
    setup = plan(
        cache=cache,
        head="audio-adaptive",  # with a protocol, its audio-adaptive method
        source=source,
        target=target,
        overrides=overrides,
        device=device,
        evaluation=False,
        protocol=protocol,
    )
    train_set, target_set, _, _ = setup.load_sets(evaluation=False)
    store, device, modalities = setup.store, setup.device, setup.modalities
    inputs = {m: tuple(train_set.inputs[m].shape[1:]) for m in modalities}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = setup.build_head(inputs).to(device)
    context = TrainingContext(
        run=Path(out),
        store=store,
        train_set=train_set,
        target_set=target_set,
        eval_sets={},
        seed=seed,
        device=device,
        progress=progress,
    )
    head.attach_inputs(context)
    head.check_evaluation({"source_train": train_set}, device)  # fails here, not in stage 5
    stages = AudioAdaptiveStages(head, context)
    shapes = {m: tuple(x.shape[1:]) for m, x in train_set.inputs.items()}
    with shape_errors(head.name, shapes, f"train its stages up to {until!r}"):
        stages.run(until=until)
    return stages


__all__ = ["run_stages"]
