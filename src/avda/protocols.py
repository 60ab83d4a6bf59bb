"""Named protocols: how one paper trained and evaluated every method of its main table.

A :class:`Protocol` fixes, for every head it covers *and the paper's baselines*, the config
fields that make a run comparable with the paper's numbers (optimiser, schedule, clip sampling,
test clips, labelled target data), and the evaluation rule its table applies to every row
(final predictions, or the mean over the last k checkpoints; top-1, EPIC-100 or mAP)::

    avda train --protocol mmsada-epic55 --head source-only ...   # MM source-only, as in Table 1
    protocol: mmsada-epic55                                      # a sweep spec's key

``resolve(head, overrides)`` returns the head that runs (a baseline may be another head with
its adaptation terms off: TA3N's source-only is TA3N without target) and its config values:
the protocol's common fields (those the head has), then the head's own, then the user's
explicit values, which win. A run records ``protocol`` and ``protocol_role`` (the name asked
for) in its ``config.yaml``; :mod:`avda.evaluate.aggregate` reads them and applies the
protocol's :class:`EvaluationRule` to every row. ``docs/protocols.md`` has each protocol's
split, sampling, optimiser, schedule, evaluation, model selection and deviations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from avda.errors import ConfigError
from avda.registry import unknown_name_message

LAYOUTS = ("settings", "epic100")
RULE_METRICS = ("auto", "top1", "top5", "mca", "mAP", "mAP-present", "mAP-authors", "epic100")


@dataclasses.dataclass(frozen=True)
class EvaluationRule:
    """What a protocol's table reports for each run.

    ``checkpoints``: 1 scores the final predictions; k > 1 scores each of the last k
    evaluations' predictions (``RUN/epochs/<epoch>/predictions``, written because the protocol
    sets ``keep_last_predictions = k``) and reports their mean (MM-SADA's "last 9 epochs"), or
    with ``reduce="max"`` one of them: the checkpoint with the best :meth:`main_metric` (the
    first on a tie, as the authors' strict ``>``), every column of the run from that one epoch
    (the original TA3N's ``model_best``: the epoch with the best target top-1 on the set it
    reports, a selection on that set); a table of another ``--metric`` or ``--task`` picks by
    the one it shows (:func:`avda.evaluate.aggregate.scored_checkpoints`).
    ``metrics``: the numbers of each cell (several: one column per metric and setting);
    ``auto`` is top-1 for single-label tasks and mAP for multi-label ones.
    """

    checkpoints: int = 1
    metrics: tuple[str, ...] = ("auto",)
    layout: str = "settings"
    reduce: str = "mean"  # of the checkpoints' scores: "mean" or "max"

    def main_metric(self) -> str:
        """The metric that picks the checkpoint of ``reduce="max"``: EPIC-100's action top-1
        (the EPIC-100 code's ``prec1``), else the first of :attr:`metrics` (of a run's first
        task)."""
        if self.layout == "epic100":
            return "action top-1"
        return "top1 or mAP" if self.metrics[0] == "auto" else self.metrics[0]

    def describe(self, metric: str | None = None) -> str:
        """What a table's cells are; ``metric``: the one a table shows instead of the rule's
        (``avda evaluate --metric``), which then also picks ``reduce="max"``'s checkpoint."""
        metrics = (metric,) if metric else self.metrics
        names = ", ".join("top1 or mAP" if m == "auto" else m for m in metrics)
        if self.checkpoints == 1:
            return f"{names} of the final predictions"
        if self.reduce == "max":
            return (
                f"{names} of the checkpoint with the best {metric or self.main_metric()} of "
                f"the last {self.checkpoints}, chosen on the scored set"
            )
        # each checkpoint scored alone, the scores averaged (not the averaged predictions')
        return f"{names} of each of the last {self.checkpoints} checkpoints, averaged"

    def needs(self) -> str:
        """``the mean of the last 9 checkpoints`` (what a run must keep for this rule)."""
        how = "the best" if self.reduce == "max" else "the mean"
        return f"{how} of the last {self.checkpoints} checkpoints"


@dataclasses.dataclass(frozen=True)
class HeadRecipe:
    """How a protocol trains one method: the head that runs and its config values."""

    head: str
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One paper's (or avda's ``unified``) training and evaluation protocol."""

    name: str
    paper: str
    summary: str
    settings: tuple[str, ...]  # the settings (or groups) of its table
    common: Mapping[str, Any]  # fields set on every head that has them
    heads: Mapping[str, HeadRecipe]  # method name -> recipe; empty: every head, common only
    evaluation: EvaluationRule
    # task -> the benchmark's class count: the classifiers' width when the cache records no
    # class table (a manifest subset without its .build.json; its largest id may be below)
    classes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # setting name -> method -> values that differ by direction (TA3N's U->H / H->U beta and
    # gamma): applied over the method's recipe when a run's source and target are that
    # setting's domains, under the user's values
    per_setting: Mapping[str, Mapping[str, Mapping[str, Any]]] = dataclasses.field(
        default_factory=dict
    )
    # docs/protocols.md's columns, one phrase each
    split: str = ""
    sampling: str = ""
    optimiser: str = ""
    schedule: str = ""
    selection: str = ""

    def methods(self) -> list[str]:
        from avda.train import heads as heads_lib

        return list(self.heads) if self.heads else heads_lib.names()

    def head_for(self, method: str) -> str:
        """The registered head that trains ``method`` under this protocol."""
        from avda.train import heads as heads_lib

        if self.heads:
            if method not in self.heads:
                raise ConfigError(
                    unknown_name_message(f"method of protocol {self.name}", method, self.heads)
                    + " (the unified protocol runs every head)"
                )
            return self.heads[method].head
        if method not in heads_lib.HEADS:
            raise ConfigError(unknown_name_message("head", method, heads_lib.names()))
        return method

    def named_settings(self) -> list:
        """The :class:`~avda.data_manifests.settings.Setting` of each of :attr:`settings`, a
        group (``epic55-mmsada``) as its members."""
        from avda.data_manifests.settings import NAMED_SETTINGS, SETTING_GROUPS

        return [
            setting
            for name in self.settings
            for setting in SETTING_GROUPS.get(name, (NAMED_SETTINGS.get(name),))
            if setting is not None
        ]

    def setting_of(self, source: Sequence[str] | None, target: Sequence[str] | None) -> str | None:
        """The name of the protocol's setting whose domains are ``source`` -> ``target`` (in
        any order on each side: ``D3,D2 -> D1`` is ``D2,D3-D1``), else None (no domains given,
        as ``--show-config`` without a setting, or domains off its benchmark, where only its
        recipe applies). Refuses, when :attr:`per_setting` sets values by setting, domains all
        of its benchmark's that are none of its settings: its defaults, which are its first
        setting's values, would be wrong for them."""
        if not source or not target:
            return None
        wanted = (frozenset(map(str, source)), frozenset(map(str, target)))
        settings = self.named_settings()
        for setting in settings:
            if (frozenset(setting.source_domains), frozenset(setting.target_domains)) == wanted:
                return setting.name
        domains = {d for setting in settings for d in setting.domains}
        if self.per_setting and wanted[0] | wanted[1] <= domains:
            raise ConfigError(
                f"protocol {self.name} sets values by setting ({', '.join(self.per_setting)}) "
                f"and {','.join(source)} -> {','.join(target)} is none of its settings "
                f"({', '.join(s.name for s in settings)}), so its defaults would be wrong for "
                "it; give the --source/--target of one of them, or train without --protocol"
            )
        return None

    def resolve(
        self,
        method: str,
        overrides: Mapping[str, Any] | None = None,
        source: Sequence[str] | None = None,
        target: Sequence[str] | None = None,
    ):
        """``(head, values)``: the head that trains ``method`` and its config values (the
        protocol's, those of the run's setting when :attr:`per_setting` has it, then
        ``overrides``, which win). Refuses an override that would break the protocol's
        evaluation rule (too few kept checkpoints)."""
        from avda.train import heads as heads_lib

        head = self.head_for(method)
        cls = heads_lib.config_class(head)
        fields = set(cls.field_names())
        values = {k: v for k, v in self.common.items() if k in fields}
        if self.heads:
            values.update(self.heads[method].values)
        setting = self.setting_of(source, target)
        if setting is not None:
            values.update(self.per_setting.get(setting, {}).get(method, {}))
        explicit = dict(overrides or {})
        if "epochs" in explicit:  # the protocol's stages scale to the user's length
            values.update(cls._scaled_stages(explicit["epochs"], values, explicit))
            if "schedule" not in explicit:
                values.pop("schedule", None)
        values.update(explicit)
        needed = self.evaluation.checkpoints
        if needed > 1 and int(values.get("keep_last_predictions", 0)) < needed:
            raise ConfigError(
                f"protocol {self.name} scores {self.evaluation.needs()}, but "
                f"keep_last_predictions={values.get('keep_last_predictions')} keeps fewer; "
                f"remove that --set (the protocol sets {needed})"
            )
        cls.from_dict(values)  # every value valid for the head, now (one-line ConfigError)
        return head, values


# ------------------------------------------------------------------------------ the protocols
_MMSADA_SCHEDULE = {
    # the code's 3000 + 6000 steps of 64 source clips = 77 + 154 epochs of D2's 2495 segments;
    # on another set the same number of steps (schedule=steps)
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-7,
    "batch_size": 64,
    "target_batch_size": 64,
    "epochs": 231,
    "lr_steps": (77,),
    "lr_gamma": 0.1,
    "lr_schedule": "step",
    "reference_segments": 2495,
    "schedule": "steps",
    "eval_every": 1,
    "keep_last_predictions": 9,
    "feature_scale": 8.0,
    "training_clips": "random",
    "test_clips": "mean-scores",
    "labelled_target": 0.0,
}
_MMSADA_OFF = {
    "adversarial_weight": 0.0,
    "correspondence_weight": 0.0,
    "pretrain_correspondence_weight": 0.0,
}

_UNIFIED = {
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    "lr_schedule": "dann",
    "lr_steps": (),
    "batch_size": 64,
    "target_batch_size": 64,
    "epochs": 30,
    "reference_segments": 2495,
    "schedule": "steps",
    "eval_every": 1,
    "keep_last_predictions": 9,
    "feature_scale": 8.0,
    "standardize": False,
    "training_clips": "random",
    "test_clips": "mean-scores",
    "grad_clip": 0.0,
    "labelled_target": 0.0,
}

_AUDIO_ADAPTIVE_BASE = {
    # each head at its own paper's recipe; the table's rule is the reference's (last epoch)
    "labelled_target": 0.0,
}

PROTOCOLS: dict[str, Protocol] = {}


def register(protocol: Protocol) -> Protocol:
    if protocol.name in PROTOCOLS:
        raise ConfigError(f"protocol {protocol.name!r} is registered twice")
    named = [s.name for s in protocol.named_settings()]  # a group's members included
    for setting, methods in protocol.per_setting.items():
        if setting not in named:  # a named setting of its table (setting_of)
            raise ConfigError(
                f"protocol {protocol.name}: per_setting names {setting!r}, not one of its "
                f"settings {named}"
            )
        unknown = sorted(set(methods) - set(protocol.heads))
        if unknown:
            raise ConfigError(
                f"protocol {protocol.name}: per_setting[{setting!r}] names methods {unknown} "
                f"it does not have ({', '.join(protocol.heads)})"
            )
    PROTOCOLS[protocol.name] = protocol
    return protocol


register(
    Protocol(
        name="mmsada-epic55",
        paper="Munro & Damen, CVPR 2020 (MM-SADA), Table 1",
        summary="EPIC-55 D1-D3 pairs; every row with MM-SADA's two-stage SGD schedule, one "
        "random clip per segment in training, the 5-clip test and the mean target top-1 of the "
        "last 9 checkpoints",
        settings=("epic55-mmsada",),
        classes={"verb": 8},
        common=_MMSADA_SCHEDULE,
        heads={
            "source-only": HeadRecipe("mm-sada", _MMSADA_OFF),
            "adabn": HeadRecipe("adabn", {"hidden_dim": 1024}),
            "mmd": HeadRecipe(
                "mmd",
                {
                    "hidden_dim": 1024,
                    "fusion": "late",
                    "embedding": "per-modality",
                    "bandwidth": 9.7,
                    "lowest_exponent": -8.0,
                    "highest_exponent": 8.0,
                    "exponent_step": 2**0.5,
                    "mmd_weight": 0.2,
                    "adapt_logits": False,  # MM-SADA's baseline aligns the features only
                },
            ),
            "mm-sada": HeadRecipe("mm-sada", {}),
            "mm-sada-self-supervised": HeadRecipe("mm-sada", {"adversarial_weight": 0.0}),
            "mm-sada-adversarial": HeadRecipe(
                "mm-sada", {"correspondence_weight": 0.0, "pretrain_correspondence_weight": 0.0}
            ),
        },
        evaluation=EvaluationRule(checkpoints=9, metrics=("top1",)),
        split="source D_x train (labelled) + target D_y train (unlabelled); test D_y test",
        sampling="one random clip per modality and segment; test: 5 clips, softmax averaged",
        optimiser="momentum SGD 0.9, weight decay 1e-7, batch 64 + 64",
        schedule="9,000 steps: lr 0.01 for 3,000 (stage 1), 0.001 for 6,000",
        selection="none: mean target top-1 of the last 9 checkpoints",
    )
)

register(
    Protocol(
        name="ta3n-epic100",
        paper="Chen et al., ICCV 2019 (TA3N), EPIC-100 UDA baseline code",
        summary="EPIC-100 UDA: verb, noun and action with the official scorer; source-only is "
        "TA3N without target (no attention, no domain terms); last epoch",
        settings=("epic100-uda",),
        classes={"verb": 97, "noun": 300},
        common={"tasks": ("verb", "noun"), "labelled_target": 0.0, "keep_last_predictions": 0},
        heads={
            "ta3n": HeadRecipe("ta3n", {"use_bn": "none"}),
            "source-only": HeadRecipe(
                "ta3n",
                {
                    "use_bn": "none",
                    "domain_attention": False,
                    "beta": (0.0, 0.0, 0.0),
                    "attentive_entropy_weight": 0.0,
                    "use_target": False,  # script_test_sourceonly.sh: no domain losses
                },
            ),
        },
        evaluation=EvaluationRule(checkpoints=1, metrics=("epic100",), layout="epic100"),
        split="source_train + target_train (unlabelled); test target_test",
        sampling="5 of 25 TBN snippets (TSN test indices), RGB, flow and audio concatenated",
        optimiser="SGD Nesterov 0.9, lr 3e-3, weight decay 1e-4, grad clip 20, batch 128 + 207",
        schedule="3,780 steps (30 epochs of EPIC-100), lr / 10 after epochs 9 and 19",
        selection="last epoch",
    )
)

register(
    Protocol(
        name="rna-dg",
        paper="Planamente et al., WACV 2022 (RNA-Net), supplementary Tables 2-3",
        summary="EPIC-55 domain generalisation: single-source (6 pairs) and multi-source "
        "(3 settings); the baseline is RNA-Net without its loss (DeepAll, late fusion)",
        settings=("epic55-mmsada", "epic55-dg"),
        classes={"verb": 8},
        common={"labelled_target": 0.0, "keep_last_predictions": 0},
        heads={
            "rna": HeadRecipe("rna", {"setting": "dg"}),
            "source-only": HeadRecipe("rna", {"setting": "dg", "rna_weight": 0.0}),
        },
        evaluation=EvaluationRule(checkpoints=1, metrics=("top1",)),
        split="source domain(s) train only (the target is never seen); test target test",
        sampling="every cached clip, averaged per modality",
        optimiser="SGD 0.9, lr 0.01, weight decay 1e-7, batch 64",
        schedule="1,170 steps (30 epochs of D2), lr / 10 after epoch 20",
        selection="last epoch",
    )
)

_AA_HEADS = {
    "audio-adaptive": HeadRecipe("audio-adaptive", {}),
    "source-only": HeadRecipe("source-only", {}),
    "mm-sada": HeadRecipe("mm-sada", {}),
}

register(
    Protocol(
        name="audio-adaptive-epic55",
        paper="Zhang et al., CVPR 2022 (Audio-Adaptive), Table 4",
        summary="EPIC-55 D1-D3 pairs, unsupervised; each method at its own paper's recipe, "
        "last epoch, target top-1",
        settings=("epic55-mmsada",),
        classes={"verb": 8},
        common={**_AUDIO_ADAPTIVE_BASE, "keep_last_predictions": 0},
        heads={
            **_AA_HEADS,
            "rna": HeadRecipe("rna", {"setting": "uda"}),
            "cia": HeadRecipe("cia", {"preset": "epic"}),
        },
        evaluation=EvaluationRule(checkpoints=1, metrics=("top1",)),
        split="source D_x train + target D_y train (unlabelled); test D_y test",
        sampling="each head's own (audio-adaptive: 5 clips + one audio window)",
        optimiser="each head's own (audio-adaptive: Adam; recognizer 7e-4)",
        schedule="each head's own (audio-adaptive: stages 4 / 15 / 29 epochs)",
        selection="last epoch",
    )
)

register(
    Protocol(
        name="audio-adaptive-actorshift",
        paper="Zhang et al., CVPR 2022 (Audio-Adaptive), Figure 6",
        summary="ActorShift human -> animal, unsupervised; source-only, MM-SADA and "
        "audio-adaptive at their recipes, last epoch, target top-1",
        settings=("actorshift",),
        classes={"verb": 7},  # avda.data_manifests.actorshift.CLASSES
        common={**_AUDIO_ADAPTIVE_BASE, "keep_last_predictions": 0},
        heads=dict(_AA_HEADS),
        evaluation=EvaluationRule(checkpoints=1, metrics=("top1",)),
        split="human train (labelled) + animal train (unlabelled); test animal test",
        sampling="each head's own",
        optimiser="each head's own",
        schedule="each head's own",
        selection="last epoch",
    )
)

register(
    Protocol(
        name="audio-adaptive-charadesego",
        paper="Zhang et al., CVPR 2022 (Audio-Adaptive), Table 2; Choi et al.'s semi-supervised "
        "setting",
        summary="CharadesEgo third -> first person, semi-supervised: half of the target "
        "training videos labelled; mAP in both conventions (classes with positives; the "
        "authors' code: classes without positives count 0), over test videos scored by the "
        "maximum over their clip rows where the cache has score_group (--unit windows)",
        settings=("charades-ego",),
        classes={"labels": 157},  # Charades' classes
        common={
            "labelled_target": 0.5,
            "labelled_target_pick": "first",
            "keep_last_predictions": 0,
        },
        heads={
            "source-only": HeadRecipe("source-only", {}),
            "dann": HeadRecipe("dann", {}),
            "adabn": HeadRecipe("adabn", {}),
            "mmd": HeadRecipe("mmd", {}),
            # the multi-label variant (CharadesEgo/ of the authors' code) on the labels task;
            # its get_audio_cluster_feature.py tries k = 1..19 (EPIC's: 1..20)
            "audio-adaptive": HeadRecipe(
                "audio-adaptive", {"tasks": ("labels",), "cluster_max_k": 19}
            ),
        },
        evaluation=EvaluationRule(checkpoints=1, metrics=("mAP-present", "mAP-authors")),
        split="third-person train (labelled) + first-person train, half labelled (fixed "
        "split, the same for every run); test first-person test",
        sampling="each head's own",
        optimiser="each head's own",
        schedule="each head's own",
        selection="last epoch",
    )
)

register(
    Protocol(
        name="cia-ucf-hmdb",
        paper="Yang et al., CVPR 2022 (CIA), supplementary Table 3",
        summary="UCF101 <-> HMDB51 (12 classes), both directions; CIA at its ucf-hmdb preset, "
        "source-only, MM-SADA; last epoch, target top-1",
        settings=("ucf-hmdb", "hmdb-ucf"),
        common={"labelled_target": 0.0, "keep_last_predictions": 0},
        heads={
            "cia": HeadRecipe("cia", {"preset": "ucf-hmdb"}),
            "source-only": HeadRecipe(
                "cia",
                {
                    "preset": "ucf-hmdb",
                    "video_adversarial_weight": 0.0,
                    "frame_adversarial_weight": 0.0,
                },
            ),
            "mm-sada": HeadRecipe("mm-sada", {}),
        },
        evaluation=EvaluationRule(checkpoints=1, metrics=("top1",)),
        classes={"verb": 12},  # TA3N's classInd_hmdb_ucf.txt (the full variant)
        split="source train (labelled) + target train (unlabelled); test target test",
        sampling="5 snippets (CIA); one random clip (MM-SADA)",
        optimiser="Adam 3e-3 (CIA's ucf-hmdb preset); MM-SADA's SGD",
        schedule="690 steps (30 epochs of batch 64 on UCF101's 1,438 segments)",
        selection="last epoch",
    )
)

# The original TA3N's script_train_val.sh (cmhungsteve/TA3N): RGB ResNet-101 frame features,
# 5 segments, trn-m, add_fc 1, fc_dim 512, dropout 0.5 / 0.5, use_bn none, SGD Nesterov 0.9
# (main.py), wd 1e-4 (opts.py), lr 3e-2 with --lr_adaptive dann, 30 epochs, clip 20, batch
# 128 source and 128 * num_target / num_source target (bash integer division), TransAttn,
# attentive entropy, --place_adv Y Y Y, constant beta (all positive: no ramp).
_TA3N_UCF_HMDB = {
    "use_bn": "none",
    "optimizer": "sgd",
    "lr": 3e-2,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,
    "lr_schedule": "dann-ta3n",
    "lr_steps": (),
    "grad_clip": 20.0,
    "epochs": 30,
    "schedule": "epochs",  # 30 epochs of whichever source list, as the script
    "reference_segments": 0,
    "batch_size": 128,
    "target_batch_size": 74,  # 128 * 840 // 1438 (U->H; hmdb-ucf: per_setting)
    "num_segments": 5,
    "shared_dim": 512,
    "frame_dropout": 0.5,
    "video_dropout": 0.5,
    "domain_attention": True,
    "beta": (0.75, 0.75, 0.5),  # U->H (relation, video, frame)
    "beta_warmup": False,
    "beta_ramp_gamma": 10.0,  # the original's ramp (only for ramped_beta levels: none here)
    "attentive_entropy_weight": 0.003,  # gamma, U->H
    "eval_every": 1,
}
# the script's use_target=none: no attention, no domain losses (main.py skips them)
_TA3N_NO_TARGET = {"domain_attention": False, "beta": (0.0, 0.0, 0.0), "use_target": False}
# H->U: the script's comments "beta_0 U->H: 0.75 | H->U: 1", "gamma U->H: 0.003 | H->U: 0.3";
# its bS_2 formula with the lists swapped: 128 * 1438 // 840
_TA3N_HMDB_UCF = {"beta": (1.0, 0.75, 0.5), "attentive_entropy_weight": 0.3}

register(
    Protocol(
        name="ta3n-ucf-hmdb",
        paper="Chen et al., ICCV 2019 (TA3N), UCF-HMDB full; cmhungsteve/TA3N script_train_val.sh",
        summary="UCF101 <-> HMDB51 (12 classes), both directions, TA3N as the original "
        "repository's script trains it (SGD 3e-2 DANN-annealed per step, constant beta, U->H "
        "and H->U values); source-only is TA3N without target; target top-1 of the best of "
        "the 30 epochs, as the authors select",
        settings=("ucf-hmdb", "hmdb-ucf"),
        classes={"verb": 12},  # TA3N's classInd_hmdb_ucf.txt
        common={"labelled_target": 0.0, "keep_last_predictions": 30},
        heads={
            "ta3n": HeadRecipe("ta3n", _TA3N_UCF_HMDB),
            "source-only": HeadRecipe(
                "ta3n",
                {**_TA3N_UCF_HMDB, **_TA3N_NO_TARGET, "attentive_entropy_weight": 0.0},
            ),
            # the paper's DANN + TemRelation (cmhungsteve/TA3N#23: trn-m, uSv, RevGrad, the
            # other *_DA none, use_attn none): TA3N without attention and attentive entropy
            "dann-temrelation": HeadRecipe(
                "ta3n",
                {**_TA3N_UCF_HMDB, "domain_attention": False, "attentive_entropy_weight": 0.0},
            ),
            # the paper's DANN + TemPooling (#23: frame_aggregation avgpool, the rest as
            # dann-temrelation): the frames' mean, the video and frame discriminators
            "dann-tempooling": HeadRecipe(
                "ta3n",
                {
                    **_TA3N_UCF_HMDB,
                    "frame_aggregation": "avgpool",
                    "domain_attention": False,
                    "attentive_entropy_weight": 0.0,
                },
            ),
        },
        per_setting={
            "hmdb-ucf": {
                "ta3n": {**_TA3N_HMDB_UCF, "target_batch_size": 219},
                "source-only": {"target_batch_size": 219},
                "dann-temrelation": {"beta": _TA3N_HMDB_UCF["beta"], "target_batch_size": 219},
                "dann-tempooling": {"beta": _TA3N_HMDB_UCF["beta"], "target_batch_size": 219},
            },
        },
        # main.py -ef 1 and model_best: the best of the 30 epochs on the target val list
        evaluation=EvaluationRule(checkpoints=30, metrics=("top1",), reduce="max"),
        split="source train list (labelled) + target train list (unlabelled); test the "
        "target val list",
        sampling="5 frame features per video (TSN test indices), the same every epoch",
        optimiser="SGD Nesterov 0.9, lr 3e-2, weight decay 1e-4, grad clip 20, batch 128 + 74 "
        "(U->H) / 219 (H->U)",
        schedule="30 epochs (360 steps U->H, 210 H->U), lr 3e-2 / (1 + 10 p)^0.75 per step",
        selection="the authors': the best of the 30 epochs on the target val list (the "
        "reported set)",
    )
)

register(
    Protocol(
        name="unified",
        paper="avda",
        summary="every head with the same clip sampling, optimiser, schedule and model "
        "selection, on any dataset: apples-to-apples comparisons",
        settings=(),
        common=_UNIFIED,
        heads={},
        evaluation=EvaluationRule(checkpoints=9, metrics=("auto",)),
        split="the setting's source train (labelled) + target train (unlabelled)",
        sampling="one random clip per modality and segment; test: every clip, probabilities "
        "averaged (heads that read snippets, TA3N and CIA, read their snippets)",
        optimiser="momentum SGD 0.9, lr 0.01 annealed (DANN), weight decay 1e-4, inputs at "
        "RMS norm 8, batch 64 + 64",
        schedule="1,170 steps (30 epochs of 2,495 segments)",
        selection="none: mean of the last 9 checkpoints (top-1, or mAP for multi-label)",
    )
)


def get(name: str) -> Protocol:
    """The protocol ``name``; an unknown name lists the valid ones."""
    if name not in PROTOCOLS:
        raise ConfigError(unknown_name_message("protocol", name, PROTOCOLS))
    return PROTOCOLS[name]


def names() -> list[str]:
    return list(PROTOCOLS)


def rule_for(name: str | None) -> EvaluationRule:
    """The evaluation rule of protocol ``name``; runs without a protocol: final predictions."""
    return get(name).evaluation if name else EvaluationRule()


def describe(name: str | None, metric: str | None = None) -> str:
    """``protocol mmsada-epic55 (top1 of each of the last 9 checkpoints, averaged)``
    (``metric``: the table's instead of the rule's, :meth:`EvaluationRule.describe`)."""
    if not name:
        return "no protocol (each head's defaults; final predictions)"
    return f"protocol {name} ({rule_for(name).describe(metric)})"


__all__ = ["EvaluationRule", "HeadRecipe", "PROTOCOLS", "Protocol", "describe", "get", "names"]
