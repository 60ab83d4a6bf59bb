"""The on-disk layout of an avda feature cache, as constants (documented in docs/cache_schema.md).

A test parses ``docs/cache_schema.md`` and checks that it agrees with the names here.

::

    STORE.zarr/
      zarr.json                      root attributes: {"avda_cache": PROVENANCE}
      segments/<column>              1-D arrays (N,), one per segment-table column
      features/<modality>            (N, K, D) float16, chunks (chunk_rows, K, D)
      status/<modality>              (N,) int8: 0 pending, 1 done, 2 failed, 3 missing
      errors/<modality>              (N,) string: failure message, "" when none
      clusters/<modality>            (N,) int32 audio-cluster ids, -1 where none (avda cluster)
      spatial/<modality>             (N, K, C, H, W) float16 maps before pooling (optional)

Optional parts (``clusters/``, ``spatial/``, the optional provenance keys) were added without a
version bump: a version-1 reader that does not know them ignores them.
"""

from __future__ import annotations

import enum

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
ROOT_ATTRIBUTE = "avda_cache"
# Attribute of clusters/<modality>: how the clusters were made (written by avda cluster).
CLUSTERS_ATTRIBUTE = "avda_clusters"

SEGMENTS_GROUP = "segments"
FEATURES_GROUP = "features"
STATUS_GROUP = "status"
ERRORS_GROUP = "errors"
CLUSTERS_GROUP = "clusters"
SPATIAL_GROUP = "spatial"
GROUPS = (SEGMENTS_GROUP, FEATURES_GROUP, STATUS_GROUP, ERRORS_GROUP, CLUSTERS_GROUP, SPATIAL_GROUP)
# Groups every store has from its creation; clusters/ and spatial/ appear when written.
REQUIRED_GROUPS = (SEGMENTS_GROUP, FEATURES_GROUP, STATUS_GROUP, ERRORS_GROUP)

FEATURE_DTYPE = "float16"
SPATIAL_DTYPE = "float16"
STATUS_DTYPE = "int8"
CLUSTER_DTYPE = "int32"
DEFAULT_CHUNK_ROWS = 256
MISSING_CLASS = -1

# Segment-table columns stored in segments/: name -> kind ("str", "float", "int").
SEGMENT_COLUMNS: dict[str, str] = {
    "uid": "str",
    "video_id": "str",
    "domain": "str",
    "split": "str",
    "start_sec": "float",
    "stop_sec": "float",
    "participant_id": "str",
    "narration": "str",
    "verb": "str",
    "verb_class": "int",
    "noun": "str",
    "noun_class": "int",
    "labels": "str",
    "score_group": "str",
    "unlabelled_only": "str",
}
REQUIRED_SEGMENT_COLUMNS = ("uid", "video_id", "domain", "split", "start_sec", "stop_sec")
# Prediction tasks and the segment column holding their labels (``labels``: ``"3;17"`` multi-hot)
TASK_COLUMNS = {"verb": "verb_class", "noun": "noun_class", "labels": "labels"}

# Keys of the provenance dictionary in the root attributes.
PROVENANCE_KEYS = (
    "schema_version",
    "avda_version",
    "created",
    "manifest_sha256",
    "num_segments",
    "chunk_rows",
    "recipe",
    "modalities",
)
# Keys written only by some writers (the feature files a store was imported from), or added
# after version 1 (``cache_id``: a random id written once at creation, the store's identity;
# absent from stores made before it).
OPTIONAL_PROVENANCE_KEYS = ("cache_id", "imports", "classes")
# Keys of each entry of provenance["imports"] (avda cache import).
IMPORT_KEYS = (
    "file",
    "sha256",
    "segments_sha256",
    "format",
    "rows",
    "domain",
    "split",
    "imported",
    "fill",
)
# Import formats of one folder of per-video features sampled at --feature-rate / --placement
# (a .npy file per video; TA3N's folder of img_NNNNN.t7 frame tensors per video).
PER_VIDEO_FORMATS = ("npy", "ta3n-t7")
# Keys of each entry of provenance["modalities"].
MODALITY_KEYS = (
    "backbone",
    "weights",
    "weights_sha256",
    "num_clips",
    "num_features",
    "input_spec",
)
# Keys some writers add to a modality entry: the seed of a random-init backbone, what the
# modality was read from, the shape (C, H, W) of its spatial maps.
OPTIONAL_MODALITY_KEYS = (
    "random_init_seed",
    "input",
    "spatial_shape",
    "precision",
    "frame_times",
    "video_timestamps",
    "finetuned",
    "finished_rows",
)


class Status(enum.IntEnum):
    """Per-segment, per-modality extraction state (status/<modality>)."""

    PENDING = 0
    DONE = 1
    FAILED = 2
    MISSING = 3  # the input does not exist (e.g. no audio track): features are zeros
