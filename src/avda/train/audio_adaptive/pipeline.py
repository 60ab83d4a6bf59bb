"""The stages of Audio-Adaptive before the recognizer, resumable, each output stored.

Order (the reference's ``bash.sh``), all under ``RUN/stages/`` (see :mod:`avda.train.stages`)::

    1 audio-classifier       source audio -> classifier                    audio-classifier.pt
    2 clusters               per-class k-means + Elbow on source audio     clusters.npz
                             (reused from the cache's clusters/<audio> when ``avda cluster``
                             made them for the same source domains and settings)
    3 weights                audio-balanced sample weights                 weights.npz
    4 absent-labels          r least likely classes per target segment     absent-labels.npz
                             (multi-label: per target video)
    5 encoder-<visual>       audio-adaptive encoder, one per visual stream encoder-<visual>.pt
    6 pseudo-labels-<visual> hard pseudo labels on target (fused, refined pseudo-labels-<visual>.npz
                             by class centroids: ``pseudo_labels``,
                             ``pseudo_label_refine``)
      audio-embeddings       frozen stage-1 audio embedding of every       audio-embeddings.npz
                             segment of every set the run uses
      encoded-<visual>       frozen stage-5 clip features of every         encoded-<visual>.npz
                             segment of every set the run uses

Stage 6's recognizer (and stage 7's fusion of the streams) is the head the training loop trains.
A multi-label task (CharadesEgo) runs the authors' ``CharadesEgo/`` variant (``bash.sh`` there):
binary cross-entropy everywhere, stage 1 on the source-domain rows of the labelled set only,
per-class clusters of the source segments of each class (a segment is in one clustering per
present class), stage 4's per-class rule (the ``(1 - alpha_k) * gamma`` fraction of target
videos least likely for class k are absent, a video's probabilities the mean over its rows),
stage 5 with the labelled target rows (those ``labelled_target`` moved into the labelled set)
as an extra unweighted term, and no stage 6a: the CharadesEgo recognizer learns from the
labelled target half instead of pseudo labels.

A stage's key holds its settings, the keys of the stages it depends on and the identity of the
cache whose features it read (:func:`avda.train.stages.cache_identity`: the store and how each
modality it reads was made), so a finished stage is reused only for the same inputs and
settings. The last two are what stage 6b and evaluation
read in place of running the frozen audio classifier and encoders on every batch
(:meth:`AudioAdaptiveStages.attach_frozen_outputs`): the frozen modules run in eval mode on
whole segments, so their output is a fixed function of the segment; they are remade (not
refused) when the sets change. :func:`avda.train.audio_adaptive.run.run_stages` runs stages
up to a given one on its own (without training the recognizer), e.g. to inspect clusters or
pseudo labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from avda.errors import ConfigError, RunError
from avda.registry import unknown_name_message
from avda.train.audio_adaptive.audio_classifier import (
    PooledAudioClassifier,
    multilabel_pseudo_absent_labels,
    pseudo_absent_labels,
)
from avda.train.audio_adaptive.encoder import AudioAdaptiveEncoder, one_clip_per_segment
from avda.train.audio_adaptive.losses import (
    audio_balanced_weights,
    class_frequencies,
    encoder_loss,
    multilabel_audio_balanced_weights,
    multilabel_encoder_loss,
)
from avda.train.data import FeatureSet, evaluation_domain, split_batches
from avda.train.layers import per_domain, set_norm_domain
from avda.train.optim import make_optimizer
from avda.train.stages import (
    CACHE_KEY,
    StageStore,
    TrainingContext,
    cache_identity,
    fingerprint,
    fit_epochs,
    stage_random_state,
)

if TYPE_CHECKING:
    from avda.train.heads.audio_adaptive import AudioAdaptive

log = logging.getLogger(__name__)

STAGE_ORDER = (
    "audio-classifier",
    "clusters",
    "weights",
    "absent-labels",
    "encoder",
    "pseudo-labels",
)
CLUSTER_RANDOM_STATE = 0  # the authors' fixed random_state; also `avda cluster`'s default
PSEUDO_LABEL_KEY = "_pseudo_label/{}"
AUDIO_EMBEDDING_KEY = "_audio_embedding"  # (N, A) stage-1 embedding of every segment
ENCODED_KEY = "_encoded/{}"  # (N, K, C_v) stage-5 clip features of stream <visual>
FROZEN_BATCH = 256  # segments per forward pass when the frozen outputs are computed


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> float | None:
    known = labels >= 0
    if not known.any():
        return None
    return float(np.mean(predictions[known] == labels[known]))


def centroid_labels(
    features: Sequence[np.ndarray], probabilities: np.ndarray, prior: float, rounds: int = 2
) -> np.ndarray:
    """Pseudo labels refined by class centroids in feature space (SHOT's, Liang et al., ICML
    2020, one centroid set per stream): each stream's ``(N, D)`` features are centred on their
    mean and compared by cosine with its class centroids, weighted by ``probabilities`` in the
    first round and by the previous round's hard labels after; a segment takes the class of
    the largest sum over the streams of the cosines plus ``prior`` times the log of its
    ``probabilities`` (the fused classifier's: with ``prior`` > 0 the centroids move a
    segment only where the classifier is unsure). A class without weight has no centroid and
    takes no segment (SHOT's ``labelset``). Returns ``(N,)`` int64 labels."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    count = probabilities.shape[1]
    log_prior = prior * np.log(np.clip(probabilities, 1e-30, None))
    unit = []
    for block in features:
        block = np.asarray(block, dtype=np.float64)
        block = block - block.mean(axis=0, keepdims=True)
        unit.append(block / np.linalg.norm(block, axis=1, keepdims=True).clip(min=1e-12))
    weights = probabilities
    labels = probabilities.argmax(axis=1)
    for _ in range(rounds):
        mass = weights.sum(axis=0)
        scores = log_prior.copy()
        for block in unit:
            centroids = weights.T @ block
            norms = np.linalg.norm(centroids, axis=1, keepdims=True)
            cosines = block @ (centroids / norms.clip(min=1e-12)).T
            scores += np.where(mass[None, :] > 0, cosines, -np.inf)
        labels = scores.argmax(axis=1)
        weights = np.eye(count)[labels]
    return labels.astype(np.int64)


def _clip_features(encoder: AudioAdaptiveEncoder, visual: torch.Tensor, audio: torch.Tensor):
    return encoder(visual, audio).features


def _mean_clip_features(
    encoder: AudioAdaptiveEncoder, visual: torch.Tensor, audio: torch.Tensor
) -> torch.Tensor:
    return _clip_features(encoder, visual, audio).float().mean(dim=1)


def _probabilities(encoder: AudioAdaptiveEncoder, visual: torch.Tensor, audio: torch.Tensor):
    return encoder.predict(visual, audio)


def _encoder_step(optimizer, losses, clipped, grad_clip: float, sums: dict[str, float]) -> None:
    """One stage-5 optimiser step on ``losses["loss"]`` (each part of ``clipped`` clipped to
    ``grad_clip`` when it is > 0), adding every loss to ``sums``."""
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if grad_clip:
        for part in clipped:
            torch.nn.utils.clip_grad_norm_(part, grad_clip)
    optimizer.step()
    for k, v in losses.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach())


class AudioAdaptiveStages:
    """Runs or reloads stages 1-6 for ``head`` on the data of ``context``."""

    def __init__(self, head: AudioAdaptive, context: TrainingContext) -> None:
        self.head = head
        self.config = head.config
        self.context = context
        self.stages = StageStore(context.run, read_only=context.read_only)
        self.device = context.device
        self.task = head.task
        self.num_classes = head.task.num_classes
        self.multi_label = head.task.multi_label
        self.source_labels = context.train_set.labels[self.task.name].numpy()
        # Rows of the labelled set from a source domain: all of them, except the labelled
        # target rows of a semi-supervised multi-label run (the CharadesEgo code keeps them apart)
        self.source_mask = np.ones(len(context.train_set), dtype=bool)
        if self.multi_label:
            target_domains = sorted(set(context.target_set.domains.tolist()))
            self.source_mask = ~np.isin(context.train_set.domains, target_domains)
        target_labels = context.target_set.labels.get(self.task.name)
        self.target_labels = (
            target_labels.numpy()
            if target_labels is not None
            else np.full(len(context.target_set), -1)
        )
        self.keys: dict[str, dict[str, Any]] = {}
        self._done: dict[str, Any] = {}  # stage outputs already run or loaded in this process

    # ------------------------------------------------------------------ orchestration
    def run(self, until: str = "pseudo-labels") -> None:
        """Stages 1..``until`` in order; attaches pseudo labels to the target set at the end."""
        if until not in STAGE_ORDER:
            raise ConfigError(unknown_name_message("audio-adaptive stage", until, STAGE_ORDER))
        last = STAGE_ORDER.index(until)
        self.audio_classifier()
        if last >= STAGE_ORDER.index("clusters"):
            self.clusters()
        if last >= STAGE_ORDER.index("weights"):
            self.sample_weights()
        if last >= STAGE_ORDER.index("absent-labels"):
            self.absent_labels()
        for visual in self.head.visual_modalities:
            if last >= STAGE_ORDER.index("encoder"):
                self.encoder(visual)
            if last >= STAGE_ORDER.index("pseudo-labels") and not self.multi_label:
                labels = torch.from_numpy(self.pseudo_labels(visual))
                self.context.target_set.inputs[PSEUDO_LABEL_KEY.format(visual)] = labels

    def base_key(self, *modalities: str) -> dict[str, Any]:
        """The data a stage reads: its segments, labels, and ``modalities`` of the cache."""
        context = self.context
        return {
            **self.cache_key(*modalities),
            "seed": context.seed,
            "task": self.task.name,
            "num_classes": self.num_classes,
            "source_uids": fingerprint(context.train_set.uids),
            "source_labels": fingerprint(self.source_labels),
            "target_uids": fingerprint(context.target_set.uids),
            "standardize": self.config.standardize,
            **({"feature_scale": self.config.feature_scale} if self.config.feature_scale else {}),
            "audio_modality": self.config.audio_modality,
        }

    def cache_key(self, *modalities: str) -> dict[str, Any]:
        """The key's entry naming the cache a stage's features come from: the audio and
        ``modalities`` (every stage reads the audio, or a stage that did)."""
        modalities = (self.config.audio_modality, *modalities)
        return {CACHE_KEY: cache_identity(self.context.store, modalities)}

    def _settings(self, *names: str) -> dict[str, Any]:
        values = self.config.to_dict()
        return {name: values[name] for name in names}

    def _upstream(self, *names: str) -> dict[str, str]:
        return {name: _digest(self.keys[name]) for name in names}

    def _batches(self, size: int, count: int, generator: torch.Generator):
        yield from split_batches(torch.randperm(count, generator=generator), size)

    # ------------------------------------------------------------------ stage 1
    def audio_classifier(self) -> PooledAudioClassifier:
        name = "audio-classifier"
        if name in self._done:
            return self._done[name]
        key = {
            **self.base_key(),
            **self._settings(
                "audio_hidden_dim", "audio_epochs", "audio_lr", "audio_batch_size", "weight_decay"
            ),
            # the pooled classifier's layers (a stage stored before its BatchNorm is retrained)
            "audio_classifier": "linear-batchnorm-relu",
            # multi-label: binary cross-entropy on the source-domain rows
            **(
                {"multi_label": True, "source_rows": fingerprint(self.source_mask)}
                if self.multi_label
                else {}
            ),
        }
        self.keys[name] = key
        target = self.head.audio_classifier
        if self.stages.is_done(name, key):
            self._done[name] = self.stages.load_module(name, target)
            return target
        config = self.config
        train = self.context.train_set
        audio = config.audio_modality
        labels = torch.from_numpy(self.source_labels)
        rows = torch.from_numpy(np.flatnonzero(self.source_mask))  # every row if single-label
        with stage_random_state(self.context.seed + 1, self.device):
            model = PooledAudioClassifier(
                train.inputs[audio].shape[-1], self.num_classes, hidden_dim=config.audio_hidden_dim
            ).to(self.device)
            optimizer = make_optimizer(
                "adam", model.parameters(), lr=config.audio_lr, weight_decay=config.weight_decay
            )
            generator = torch.Generator().manual_seed(self.context.seed + 1)

            def run_epoch(epoch: int) -> dict[str, float]:
                total, steps = 0.0, 0
                for position in self._batches(config.audio_batch_size, len(rows), generator):
                    index = rows[position]  # never one row alone (split_batches)
                    inputs = train.features(audio, index).to(self.device)
                    logits, _ = model(inputs)
                    if self.multi_label:  # CharadesEgo/train_audio_only.py: BCE on sigmoids
                        loss = torch.nn.functional.binary_cross_entropy_with_logits(
                            logits, labels[index].to(self.device, logits.dtype)
                        )
                    else:
                        loss = torch.nn.functional.cross_entropy(
                            logits, labels[index].to(self.device)
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, steps = total + float(loss.detach()), steps + 1
                return {"loss": total / max(steps, 1)}

            history = fit_epochs(
                name=name,
                stages=self.stages,
                key=key,
                module=model,
                optimizer=optimizer,
                epochs=config.audio_epochs,
                run_epoch=run_epoch,
                generator=generator,
                progress=self.context.progress,
                sinks=self.context.sinks,
            )
        probabilities = self._audio_probabilities(model, train)
        if self.multi_label:
            from avda.scoring.metrics import mean_average_precision

            mask = self.source_mask
            summary = {
                "history": history,
                "source_train_map": float(
                    mean_average_precision(probabilities[mask], self.source_labels[mask])
                ),
            }
            log.info("audio classifier: source-train mAP %.4f", summary["source_train_map"])
        else:
            summary = {
                "history": history,
                "source_train_accuracy": _accuracy(probabilities.argmax(1), self.source_labels),
            }
            log.info(
                "audio classifier: source-train accuracy %.3f", summary["source_train_accuracy"]
            )
        self.stages.save_module(name, model, key, summary)
        target.load_state_dict(model.state_dict())
        self._done[name] = target
        return target

    @torch.no_grad()
    def _audio_probabilities(self, model: PooledAudioClassifier, feature_set: FeatureSet):
        model.eval()
        audio = self.config.audio_modality
        out = []
        for start in range(0, len(feature_set), 1024):
            rows = slice(start, start + 1024)
            logits, _ = model(feature_set.features(audio, rows).to(self.device))
            out.append((logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.num_classes))

    # ------------------------------------------------------------------ stage 2
    def clusters(self) -> np.ndarray:
        """Per-class audio cluster id of every source training segment."""
        # scipy and scikit-learn (4 s of importing): only the heads that cluster load them
        from avda.train.clustering import cluster_per_class, cluster_settings, stored_clusters

        name = "clusters"
        if name in self._done:
            return self._done[name]
        config = self.config
        domains = sorted(set(self.context.train_set.domains.tolist()))
        settings = cluster_settings(
            task=self.task.name,
            split="train",
            max_clusters=config.cluster_max_k,
            knee=config.cluster_knee,
            n_init=config.cluster_n_init,
            random_state=CLUSTER_RANDOM_STATE,
        )
        key = {**self.base_key(), "domains": domains, "settings": settings}
        if self.multi_label:
            key["multi_label"] = True
            key["source_rows"] = fingerprint(self.source_mask)
        self.keys[name] = key
        if self.stages.is_done(name, key):
            self._done[name] = self.stages.load_arrays(name)["clusters"]
            return self._done[name]
        if self.multi_label:
            return self._multilabel_clusters(name, key)
        store = self.context.store
        audio = config.audio_modality
        rows = self.context.train_set.rows
        stored = stored_clusters(store, audio, domains, settings)
        if stored is not None and np.all(stored[rows] >= 0):
            clusters = stored[rows]
            origin = f"cache {store.path} clusters/{audio}"
        else:
            features = store.load(audio, rows).mean(axis=1)  # raw cached (n, K, D) -> (n, D)
            per_class = cluster_per_class(
                features,
                self.source_labels,
                max_clusters=config.cluster_max_k,
                knee=config.cluster_knee,
                n_init=config.cluster_n_init,
                random_state=CLUSTER_RANDOM_STATE,
            )
            clusters = np.full(len(rows), -1, dtype=np.int64)
            for result in per_class.values():
                clusters[result.rows] = result.labels
            origin = "computed in this run (k-means + Elbow on the cached audio features)"
        per_class_counts = {
            str(c): int(clusters[self.source_labels == c].max()) + 1
            for c in np.unique(self.source_labels)
        }
        log.info("audio clusters per class (%s): %s", origin, per_class_counts)
        self.stages.save_arrays(
            name,
            {
                "uids": self.context.train_set.uids,
                "labels": self.source_labels,
                "clusters": clusters,
            },
            key,
            {"origin": origin, "clusters_per_class": per_class_counts},
        )
        self._done[name] = clusters
        return clusters

    def _multilabel_clusters(self, name: str, key: dict[str, Any]) -> np.ndarray:
        """``(N, C)`` cluster id of every source-domain segment in each of its present classes
        (-1 elsewhere, and on labelled target rows): one k-means + Elbow per class on the audio
        features of the source segments that contain it."""
        from avda.train.clustering import cluster_per_class

        config = self.config
        rows = self.context.train_set.rows
        source = np.flatnonzero(self.source_mask)
        present = self.source_labels > 0
        features = self.context.store.load(config.audio_modality, rows[source]).mean(axis=1)
        clusters = np.full(present.shape, -1, dtype=np.int64)
        per_class_counts = {}
        for class_id in np.flatnonzero(present[source].any(axis=0)):
            members = present[source, class_id]
            result = cluster_per_class(
                features[members],
                np.zeros(int(members.sum()), dtype=np.int64),
                max_clusters=config.cluster_max_k,
                knee=config.cluster_knee,
                n_init=config.cluster_n_init,
                random_state=CLUSTER_RANDOM_STATE,
            )[0]
            clusters[source[members], class_id] = result.labels
            per_class_counts[str(class_id)] = int(result.labels.max()) + 1
        log.info("audio clusters per class (multi-label, source rows): %s", per_class_counts)
        self.stages.save_arrays(
            name,
            {
                "uids": self.context.train_set.uids,
                "labels": self.source_labels,
                "clusters": clusters,
            },
            key,
            {
                "origin": "computed in this run (multi-label)",
                "clusters_per_class": per_class_counts,
            },
        )
        self._done[name] = clusters
        return clusters

    # ------------------------------------------------------------------ stage 3
    def sample_weights(self) -> np.ndarray:
        """Audio-balanced weight of every source training segment (eq. 3)."""
        name = "weights"
        if name in self._done:
            return self._done[name]
        clusters = self.clusters()
        key = {
            **self._settings("balance_beta"),
            "upstream": self._upstream("clusters"),
            **self.cache_key(),
        }
        self.keys[name] = key
        if self.stages.is_done(name, key):
            self._done[name] = self.stages.load_arrays(name)["weights"]
            return self._done[name]
        if self.multi_label:  # 0 on labelled target rows: their encoder term is unweighted
            weights = np.zeros(len(self.source_labels), dtype=np.float64)
            weights[self.source_mask], table = multilabel_audio_balanced_weights(
                self.source_labels[self.source_mask],
                clusters[self.source_mask],
                self.config.balance_beta,
            )
        else:
            weights, table = audio_balanced_weights(
                self.source_labels, clusters, self.num_classes, self.config.balance_beta
            )
        summary = {"table": {str(c): {str(k): w for k, w in t.items()} for c, t in table.items()}}
        self.stages.save_arrays(
            name, {"uids": self.context.train_set.uids, "weights": weights}, key, summary
        )
        self._done[name] = weights
        return weights

    # ------------------------------------------------------------------ stage 4
    def absent_labels(self) -> np.ndarray:
        """Multi-hot pseudo-absent classes ``(N_target, C)`` from the audio classifier."""
        name = "absent-labels"
        if name in self._done:
            return self._done[name]
        self.audio_classifier()
        videos = self._grouped_target_videos() if self.multi_label else None
        key = {
            **self._settings("absent_gamma" if self.multi_label else "absent_classes"),
            "upstream": self._upstream("audio-classifier"),
            **self.cache_key(),
            # multi-label, a video of several rows: videos ranked (a stage stored before
            # ranked its rows alone; with one row a video the two agree, and the key is as was)
            **(
                {"rank": "videos", "target_videos": fingerprint(videos)}
                if videos is not None
                else {}
            ),
        }
        self.keys[name] = key
        if self.stages.is_done(name, key):
            self._done[name] = self.stages.load_arrays(name)["absent"]
            return self._done[name]
        probabilities = self._audio_probabilities(
            self.head.audio_classifier, self.context.target_set
        )
        if self.multi_label:
            return self._multilabel_absent(name, key, probabilities, videos)
        absent = pseudo_absent_labels(probabilities, self.config.absent_classes)
        known = self.target_labels >= 0
        summary: dict[str, Any] = {"target_segments": len(absent)}
        if known.any():  # diagnostic only: how often an "absent" class is the true one
            wrong = absent[np.flatnonzero(known), self.target_labels[known]]
            summary["true_class_marked_absent"] = float(wrong.mean())
        self.stages.save_arrays(
            name,
            {
                "uids": self.context.target_set.uids,
                "probabilities": probabilities,
                "absent": absent,
            },
            key,
            summary,
        )
        self._done[name] = absent
        return absent

    def _grouped_target_videos(self) -> np.ndarray | None:
        """The ``video_id`` of each unlabelled target row when a video has several of them
        (CharadesEgo ``--unit windows``: 10 whole-video rows, or the action windows of a cache
        without them), else None (one row a video: the rows are the videos)."""
        segments = self.context.store.segments
        rows = self.context.target_set.rows
        if "video_id" not in segments or len(rows) == 0:
            return None
        videos = segments["video_id"].to_numpy(dtype=str)[rows]
        return videos if len(np.unique(videos)) < len(videos) else None

    def _multilabel_absent(
        self,
        name: str,
        key: dict[str, Any],
        probabilities: np.ndarray,
        videos: np.ndarray | None = None,
    ) -> np.ndarray:
        """The per-class rule on the unlabelled target (alpha_k from the source rows): on its
        videos, each the mean of its rows' probabilities, where ``videos`` groups the rows
        (the authors' ``get_unlikely_cls_per_video.py``), else on the rows."""
        frequencies = class_frequencies(self.source_labels[self.source_mask])
        absent = multilabel_pseudo_absent_labels(
            probabilities, frequencies, self.config.absent_gamma, videos
        )
        summary: dict[str, Any] = {
            "target_segments": len(absent),
            **({"target_videos": len(np.unique(videos))} if videos is not None else {}),
            "absent_per_class": absent.sum(axis=0).astype(int).tolist(),
        }
        if self.target_labels.ndim == 2 and (self.target_labels > 0).any() and absent.any():
            # diagnostic only: the fraction of pseudo-absent marks that are true classes
            summary["absent_marks_on_true_classes"] = float(
                (self.target_labels[absent > 0] > 0).mean()
            )
        self.stages.save_arrays(
            name,
            {
                "uids": self.context.target_set.uids,
                "probabilities": probabilities,
                "frequencies": frequencies,
                "absent": absent,
                **({"videos": videos} if videos is not None else {}),
            },
            key,
            summary,
        )
        self._done[name] = absent
        return absent

    # ------------------------------------------------------------------ stage 5
    def _encoder_inputs(self, feature_set: FeatureSet, visual: str, index: torch.Tensor):
        head = self.head
        visual_input = feature_set.features(head.visual_key(visual), index).to(self.device)
        audio_input = feature_set.features(head.audio_token_key(), index).to(self.device)
        return head.encoder_inputs(visual_input, audio_input)

    def encoder(self, visual: str) -> AudioAdaptiveEncoder:
        name = f"encoder-{visual}"
        if name in self._done:
            return self._done[name]
        weights = torch.from_numpy(self.sample_weights()).float()
        absent = torch.from_numpy(self.absent_labels())
        stream = self.head.stream_settings(visual)  # the flow stream has its own lr, length
        key = {
            **self.base_key(visual),
            "visual": visual,
            "encoder_epochs": stream.encoder_epochs,
            "encoder_lr": stream.encoder_lr,
            # only when set, so the keys of runs made before clipping existed still match
            **({"encoder_grad_clip": stream.encoder_grad_clip} if stream.encoder_grad_clip else {}),
            **self._settings(
                "encoder_input",
                "encoder_batch_size",
                "weight_decay",
                "absent_weight",
                "attention_dim",
                "attention_depth",
                "attention_heads",
                "attention_head_dim",
                "attention_mlp_dim",
                "attention_dropout",
                "attention_embedding_dropout",
                "encoder_bottleneck",
                "encoder_dropout",
            ),
            # only when set, so the keys of runs made before it existed still match (they
            # rectified the normalised features)
            **(
                {"domain_norm": True, **({} if self.config.domain_norm_relu else {"relu": False})}
                if self.config.domain_norm
                else {}
            ),
            # only when it groups this cache's clips (a cache of at most `clips` is as before)
            **(
                {"clips": self.config.clips}
                if self.head.groups_clips(self.context.train_set.inputs, visual)
                else {}
            ),
            "upstream": self._upstream("weights", "absent-labels"),
            **({"multi_label": True} if self.multi_label else {}),
        }
        self.keys[name] = key
        target_module = self.head.encoders[visual]
        if self.stages.is_done(name, key):
            self._done[name] = self.stages.load_module(name, target_module)
            return target_module
        config = self.config
        train, target = self.context.train_set, self.context.target_set
        labels = torch.from_numpy(self.source_labels)
        offset = 2 + self.head.visual_modalities.index(visual)
        with stage_random_state(self.context.seed + offset, self.device):
            model = self.head.make_encoder(visual).to(self.device)
            optimizer = make_optimizer(
                "adam", model.parameters(), lr=stream.encoder_lr, weight_decay=config.weight_decay
            )
            # The reference's flow encoder clips psi, layer4 and fc each to norm 1.
            clipped = [
                [p for p in part.parameters() if p.requires_grad]
                for part in (model.attention, model.block, model.classifier)
            ]
            generator = torch.Generator().manual_seed(self.context.seed + offset)
            # Each source segment is paired with the next target segment of a list shuffled
            # once and read cyclically (the reference dataloader's rotating target_idx_list);
            # the position follows from the epoch, so a resumed stage pairs as an uninterrupted one.
            target_cycle = torch.randperm(len(target), generator=generator)
            if self.multi_label:
                run_epoch = self._multilabel_encoder_epoch(
                    model, optimizer, clipped, stream, visual, weights, absent, target_cycle,
                    generator,
                )  # fmt: skip

            def single_label_epoch(epoch: int) -> dict[str, float]:
                sums: dict[str, float] = {}
                steps = 0
                seen = (epoch - 1) * len(train)
                for index in self._batches(config.encoder_batch_size, len(train), generator):
                    positions = torch.arange(seen, seen + len(index)) % len(target)
                    target_index = target_cycle[positions]
                    seen += len(index)
                    source_visual, source_audio = self._encoder_inputs(train, visual, index)
                    target_visual, target_audio = self._encoder_inputs(target, visual, target_index)
                    set_norm_domain(model, "source")  # each domain's batch apart, as the reference
                    source_out = model(one_clip_per_segment(source_visual, generator), source_audio)
                    set_norm_domain(model, "target")
                    target_out = model(one_clip_per_segment(target_visual, generator), target_audio)
                    losses = encoder_loss(
                        source_out.logits[:, 0],
                        labels[index].to(self.device),
                        weights[index].to(self.device),
                        target_out.logits[:, 0],
                        absent[target_index].to(self.device),
                        config.absent_weight,
                    )
                    _encoder_step(optimizer, losses, clipped, stream.encoder_grad_clip, sums)
                    steps += 1
                return {k: v / max(steps, 1) for k, v in sums.items()}

            if not self.multi_label:
                run_epoch = single_label_epoch
            history = fit_epochs(
                name=name,
                stages=self.stages,
                key=key,
                module=model,
                optimizer=optimizer,
                epochs=stream.encoder_epochs,
                run_epoch=run_epoch,
                generator=generator,
                progress=self.context.progress,
                sinks=self.context.sinks,
            )
        target_module.load_state_dict(model.state_dict())
        summary = {"history": history, "lr": optimizer.param_groups[0]["lr"]}
        self.stages.save_module(name, model, key, summary)
        self._done[name] = target_module
        return target_module

    def _multilabel_encoder_epoch(
        self, model, optimizer, clipped, stream, visual, weights, absent, target_cycle, generator
    ):
        """One stage-5 epoch of the CharadesEgo variant: over the source-domain rows, each batch
        with a batch of unlabelled target rows (pseudo-absent term) and, when the run has
        labelled target rows, a batch of those (unweighted BCE), both read cyclically from
        lists shuffled once (the reference draws both at random)."""
        config = self.config
        train, target = self.context.train_set, self.context.target_set
        labels = torch.from_numpy(self.source_labels)
        source_rows = torch.from_numpy(np.flatnonzero(self.source_mask))
        labelled_rows = torch.from_numpy(np.flatnonzero(~self.source_mask))
        labelled_cycle = (
            labelled_rows[torch.randperm(len(labelled_rows), generator=generator)]
            if len(labelled_rows)
            else labelled_rows
        )

        def run_epoch(epoch: int) -> dict[str, float]:
            sums: dict[str, float] = {}
            steps = 0
            seen = (epoch - 1) * len(source_rows)
            for position in self._batches(config.encoder_batch_size, len(source_rows), generator):
                index = source_rows[position]
                cycle = torch.arange(seen, seen + len(index))
                target_index = target_cycle[cycle % len(target)]
                seen += len(index)
                source_visual, source_audio = self._encoder_inputs(train, visual, index)
                target_visual, target_audio = self._encoder_inputs(target, visual, target_index)
                set_norm_domain(model, "source")
                source_out = model(one_clip_per_segment(source_visual, generator), source_audio)
                set_norm_domain(model, "target")  # the labelled rows below are target rows too
                target_out = model(one_clip_per_segment(target_visual, generator), target_audio)
                labelled_logits = labelled_labels = None
                if len(labelled_cycle):
                    labelled_index = labelled_cycle[cycle % len(labelled_cycle)]
                    l_visual, l_audio = self._encoder_inputs(train, visual, labelled_index)
                    labelled_out = model(one_clip_per_segment(l_visual, generator), l_audio)
                    labelled_logits = labelled_out.logits[:, 0]
                    labelled_labels = labels[labelled_index].to(self.device)
                losses = multilabel_encoder_loss(
                    source_out.logits[:, 0],
                    labels[index].to(self.device),
                    weights[index].to(self.device),
                    target_out.logits[:, 0],
                    absent[target_index].to(self.device),
                    config.absent_weight,
                    labelled_logits,
                    labelled_labels,
                )
                _encoder_step(optimizer, losses, clipped, stream.encoder_grad_clip, sums)
                steps += 1
            return {k: v / max(steps, 1) for k, v in sums.items()}

        return run_epoch

    # ------------------------------------------------------------------ stage 6 (labels)
    def encoder_probabilities(self, visual: str, feature_set: FeatureSet) -> np.ndarray:
        """Clip-averaged class probabilities of the stage-5 encoder ``(N, C)``."""
        return self._encoder_outputs(visual, feature_set, _probabilities)

    def encoder_features(self, visual: str, feature_set: FeatureSet) -> np.ndarray:
        """Clip-averaged stage-5 features of the encoder ``(N, D)`` (what the recognizer of the
        stream reads, averaged over its clips)."""
        return self._encoder_outputs(visual, feature_set, _mean_clip_features)

    @torch.no_grad()
    def _encoder_outputs(self, visual: str, feature_set: FeatureSet, compute) -> np.ndarray:
        """``compute(encoder, visual, audio)`` of the frozen stage-5 encoder of ``visual`` on
        every segment of ``feature_set``, each normalised with its domain's statistics, in
        batches of 1,024 segments, as one ``(N, ...)`` array."""
        encoder = self.head.encoders[visual]
        encoder.eval()
        out = []
        for start in range(0, len(feature_set), 1024):
            index = torch.arange(start, min(start + 1024, len(feature_set)))
            visual_input, audio_input = self._encoder_inputs(feature_set, visual, index)
            out.append(
                self._per_domain(
                    encoder, feature_set, index, compute, encoder, visual_input, audio_input
                )
                .float()
                .cpu()
            )
        return torch.cat(out).numpy() if out else np.zeros((0, self.num_classes))

    def row_is_target(self, feature_set: FeatureSet) -> np.ndarray:
        """Whether each row of ``feature_set`` is of the target domain: the labelled target
        rows of the training set (semi-supervised runs), every row of a target set."""
        if feature_set is self.context.train_set:
            return ~self.source_mask
        return np.full(len(feature_set), evaluation_domain(feature_set) == "target")

    def _per_domain(self, module, feature_set: FeatureSet, index: torch.Tensor, compute, *args):
        """``compute(*args)`` for the rows ``index`` of ``feature_set``, each row normalised with
        its domain's statistics (:func:`~avda.train.layers.per_domain`)."""
        is_target = torch.from_numpy(self.row_is_target(feature_set)[index.numpy()])
        return per_domain(module, is_target, compute, *args)

    def pseudo_labels(self, visual: str) -> np.ndarray:
        """Hard pseudo label (argmax, no threshold) of every target training segment: of the
        stream's encoder probabilities, or with ``pseudo_labels="consensus"`` of the mean of
        every stream's times the audio classifier's, with ``"product"`` of every stream's times
        the audio classifier's (both: the same label for every stream)."""
        name = f"pseudo-labels-{visual}"
        if name in self._done:
            return self._done[name]
        rule = self.config.pseudo_labels
        fused = rule != "stream"  # one label for every stream, fused with the audio's
        streams = tuple(self.head.visual_modalities) if fused else (visual,)
        for stream in streams:
            self.encoder(stream)
        upstream = [f"encoder-{stream}" for stream in streams]
        key: dict[str, Any] = (
            {"upstream": self._upstream(*upstream, "audio-classifier"), "rule": rule}
            if fused
            else {"upstream": self._upstream(*upstream)}
        )
        refine = self.config.pseudo_label_refine
        if refine != "none":  # keys of the stages stored before refinement stay valid
            key["refine"] = {"method": refine, "prior": self.config.pseudo_label_prior}
        key.update(self.cache_key(*streams))
        self.keys[name] = key
        if self.stages.is_done(name, key):
            self._done[name] = self.stages.load_arrays(name)["labels"]
            return self._done[name]
        probabilities = (
            self._fused_probabilities(rule)
            if fused
            else self.encoder_probabilities(visual, self.context.target_set)
        )
        labels = probabilities.argmax(axis=1).astype(np.int64)
        summary: dict[str, Any] = {}
        if refine == "centroids":
            unrefined = _accuracy(labels, self.target_labels)
            if unrefined is not None:
                summary["unrefined_accuracy"] = unrefined
            labels = self._centroid_labels(streams, probabilities, cache=fused)
        accuracy = _accuracy(labels, self.target_labels)
        if accuracy is not None:  # diagnostic: target labels are never used for training
            log.info("pseudo labels (%s): accuracy on target train %.3f", visual, accuracy)
        self.stages.save_arrays(
            name,
            {
                "uids": self.context.target_set.uids,
                "probabilities": probabilities,
                "labels": labels,
            },
            key,
            {
                "target_train_accuracy": accuracy,
                **summary,
                "class_counts": np.bincount(labels, minlength=self.num_classes).tolist(),
            },
        )
        self._done[name] = labels
        return labels

    def _centroid_labels(
        self, streams: Sequence[str], probabilities: np.ndarray, cache: bool
    ) -> np.ndarray:
        """:func:`centroid_labels` on the target training set, in the clip-averaged stage-5
        features of ``streams``; with ``cache`` (fused labels, the same for every stream)
        computed once for all the streams."""
        if cache and "refined" in self._done:
            return self._done["refined"]
        target_set = self.context.target_set
        features = [self.encoder_features(stream, target_set) for stream in streams]
        labels = centroid_labels(features, probabilities, prior=self.config.pseudo_label_prior)
        if cache:
            self._done["refined"] = labels
        return labels

    def _fused_probabilities(self, rule: str) -> np.ndarray:
        """The streams' encoder probabilities fused with the audio classifier's, normalised, on
        the target training set; computed once for all the streams. ``"consensus"``: the
        streams' mean times the audio's; ``"product"``: the product of every stream's and the
        audio's (the sum of their log-probabilities, as late fusion sums logits)."""
        if "fused" not in self._done:
            target_set = self.context.target_set
            streams = [
                self.encoder_probabilities(v, target_set) for v in self.head.visual_modalities
            ]
            audio = self._audio_probabilities(self.audio_classifier(), target_set)
            if rule == "product":
                logs = np.log(np.clip(np.stack([*streams, audio]), 1e-30, None)).sum(axis=0)
                product = np.exp(logs - logs.max(axis=1, keepdims=True))
            else:
                product = np.mean(streams, axis=0) * audio
            self._done["fused"] = product / product.sum(axis=1, keepdims=True).clip(min=1e-30)
        return self._done["fused"]

    # ------------------------------------------------------------------ frozen outputs
    def _sets_key(self, sets: Sequence[FeatureSet], training: Sequence[str]) -> dict[str, Any]:
        bf16 = self.config.precision == "bf16"
        return {
            "sets": {s.name: fingerprint(s.uids) for s in sets},
            # the loop's training forward runs under bf16 autocast; evaluation in float32
            **({"bf16_sets": sorted(training)} if bf16 else {}),
        }

    @torch.no_grad()
    def _frozen_outputs(
        self,
        name: str,
        key: dict[str, Any],
        sets: Sequence[FeatureSet],
        training: Sequence[str],
        compute,
    ) -> dict[str, torch.Tensor]:
        """``compute(feature_set, index)`` of every segment of every set, stored as stage
        ``name`` (remade when ``key`` changed), one float32 tensor per set name. A set the
        stored stage already holds (same segments, same upstream modules, same precision) is
        read back, not recomputed: ``avda predict`` on new rows computes only those."""
        stored = self._stored_outputs(name, key, sets, training)
        if self.stages.matches(name, key):
            if [s.name for s in sets] == list(stored):
                return stored
            log.warning("stage %s: stored outputs do not match the sets; recomputing", name)
        device = torch.device(self.device)
        bf16 = self.config.precision == "bf16"
        out: dict[str, torch.Tensor] = {}
        for feature_set in sets:
            if feature_set.name in stored:
                out[feature_set.name] = stored[feature_set.name]
                continue
            autocast = torch.autocast(
                device.type, dtype=torch.bfloat16, enabled=bf16 and feature_set.name in training
            )
            parts = []
            for start in range(0, len(feature_set), FROZEN_BATCH):
                index = torch.arange(start, min(start + FROZEN_BATCH, len(feature_set)))
                with autocast:
                    parts.append(compute(feature_set, index).float().cpu())
            out[feature_set.name] = torch.cat(parts) if parts else torch.zeros(0)
        arrays: dict[str, np.ndarray] = {}
        for feature_set in sets:
            values = out[feature_set.name].numpy()
            if not np.isfinite(values).all():
                raise RunError(
                    f"stage {name}: non-finite frozen outputs on {feature_set.name}; "
                    "the earlier stages diverged (lower their lr)"
                )
            arrays[f"{feature_set.name}.uids"] = feature_set.uids
            arrays[f"{feature_set.name}.values"] = values
        summary = {s.name: list(out[s.name].shape) for s in sets}
        self.stages.save_arrays(name, arrays, key, summary, compress=False)
        return out

    def _stored_outputs(
        self, name: str, key: dict[str, Any], sets: Sequence[FeatureSet], training: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """The sets of ``sets`` whose outputs stage ``name`` holds as ``key`` would make them:
        the same upstream record, the same segments, computed under the same precision."""
        record = self.stages.record(name)
        stored_key = (record or {}).get("key")
        if not isinstance(stored_key, dict):
            return {}
        wanted = json.loads(json.dumps(key))
        if stored_key.get("upstream") != wanted.get("upstream"):
            return {}
        stored_bf16 = set(stored_key.get("bf16_sets", ()))
        bf16 = self.config.precision == "bf16"
        arrays = None
        found: dict[str, torch.Tensor] = {}
        for feature_set in sets:
            if (feature_set.name in stored_bf16) != (bf16 and feature_set.name in training):
                continue
            if arrays is None:
                arrays = self.stages.load_arrays(name)
            values = arrays.get(f"{feature_set.name}.values")
            if (
                values is not None
                and np.array_equal(arrays.get(f"{feature_set.name}.uids", []), feature_set.uids)
                and values.dtype == np.float32
                and np.isfinite(values).all()
            ):
                found[feature_set.name] = torch.from_numpy(values)
        return found

    def attach_frozen_outputs(
        self, sets: Sequence[FeatureSet], training: Sequence[str] = ()
    ) -> None:
        """Store (stages ``audio-embeddings``, ``encoded-<visual>``) and attach to every set
        the outputs of the frozen modules on each of its segments: the stage-1 audio embedding
        (``_audio_embedding``, shared by every visual stream) and each stream's stage-5 clip
        features (``_encoded/<visual>``), which the head reads in place of running them.
        ``training``: names of the sets the loop trains on (under its bf16 autocast when
        ``precision="bf16"``; evaluation runs in float32)."""
        head = self.head
        head.audio_classifier.eval()
        audio_key = head.config.audio_modality

        def embed(feature_set: FeatureSet, index: torch.Tensor) -> torch.Tensor:
            return head.audio_classifier(feature_set.features(audio_key, index).to(self.device))[1]

        self.audio_classifier()
        name = "audio-embeddings"
        key = {**self._sets_key(sets, training), "upstream": self._upstream("audio-classifier")}
        self.keys[name] = key
        values = self._frozen_outputs(name, key, sets, training, embed)
        for feature_set in sets:
            feature_set.inputs[AUDIO_EMBEDDING_KEY] = values[feature_set.name]
        for visual in head.visual_modalities:
            encoder = self.encoder(visual)
            encoder.eval()

            def encode(
                feature_set: FeatureSet, index: torch.Tensor, visual=visual, encoder=encoder
            ):
                visual_input, audio_input = self._encoder_inputs(feature_set, visual, index)
                return self._per_domain(
                    encoder, feature_set, index, _clip_features, encoder, visual_input, audio_input
                )

            name = f"encoded-{visual}"
            key = {
                **self._sets_key(sets, training),
                "upstream": self._upstream(f"encoder-{visual}"),
            }
            self.keys[name] = key
            values = self._frozen_outputs(name, key, sets, training, encode)
            for feature_set in sets:
                feature_set.inputs[ENCODED_KEY.format(visual)] = values[feature_set.name]


__all__ = [
    "AUDIO_EMBEDDING_KEY",
    "centroid_labels",
    "ENCODED_KEY",
    "PSEUDO_LABEL_KEY",
    "STAGE_ORDER",
    "AudioAdaptiveStages",
]
