"""docs/cache_schema.md and src/avda/cache/schema.py say the same thing.

Every table marked ``<!-- table: NAME -->`` in the document is parsed and compared, in both
directions, with the constants of ``schema.py``; a real store is checked against the groups
table.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from tests.conftest import REPO

from avda import cache as cache_lib
from avda.cache import schema
from avda.cache.schema import Status

DOC = REPO / "docs" / "cache_schema.md"


def _table(name: str) -> list[list[str]]:
    """Rows (cells stripped of backticks) of the markdown table after the marker ``name``."""
    text = DOC.read_text()
    marker = f"<!-- table: {name} -->"
    assert marker in text, f"{DOC} has no table {name!r}"
    lines = text.split(marker, 1)[1].strip().splitlines()
    rows = []
    for line in lines[2:]:  # header and separator
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([cell.strip().strip("`") for cell in cells])
    return rows


def test_groups_table_lists_exactly_the_groups():
    rows = _table("groups")
    assert [row[0] for row in rows] == list(schema.GROUPS)
    dtypes = {row[0]: row[2] for row in rows}
    assert dtypes[schema.FEATURES_GROUP] == schema.FEATURE_DTYPE
    assert dtypes[schema.SPATIAL_GROUP] == schema.SPATIAL_DTYPE
    assert dtypes[schema.STATUS_GROUP] == schema.STATUS_DTYPE
    assert dtypes[schema.CLUSTERS_GROUP] == schema.CLUSTER_DTYPE


def test_status_table_matches_the_enum():
    rows = _table("status")
    assert {int(row[0]): row[1] for row in rows} == {int(s): s.name.lower() for s in Status}


def test_segment_columns_table_matches():
    rows = _table("segments")
    assert {row[0]: row[1] for row in rows} == schema.SEGMENT_COLUMNS
    required = [row[0] for row in rows if row[2] == "yes"]
    assert required == list(schema.REQUIRED_SEGMENT_COLUMNS)


@pytest.mark.parametrize(
    ("table", "required", "optional"),
    [
        ("provenance", schema.PROVENANCE_KEYS, schema.OPTIONAL_PROVENANCE_KEYS),
        ("modality", schema.MODALITY_KEYS, schema.OPTIONAL_MODALITY_KEYS),
    ],
)
def test_key_tables_match(table, required, optional):
    rows = _table(table)
    assert [row[0] for row in rows if row[1] == "yes"] == list(required)
    assert [row[0] for row in rows if row[1] == "no"] == list(optional)
    assert len(rows) == len(required) + len(optional)


def test_import_keys_table_matches():
    assert [row[0] for row in _table("imports")] == list(schema.IMPORT_KEYS)


def test_constants_are_stated():
    text = DOC.read_text()
    assert f"schema version {schema.SCHEMA_VERSION})" in text
    assert f'"{schema.ROOT_ATTRIBUTE}"' in text
    assert f"`{schema.CLUSTERS_ATTRIBUTE}`" in text
    assert f"{schema.DEFAULT_CHUNK_ROWS} by default" in text
    assert f"`{schema.MISSING_CLASS}`" in text
    supported = re.search(r"`SUPPORTED_SCHEMA_VERSIONS`: ([\d, ]+)\)", text)
    assert supported and supported.group(1) == ", ".join(map(str, schema.SUPPORTED_SCHEMA_VERSIONS))


def test_a_real_store_has_the_documented_layout(tmp_path):
    segments = pd.DataFrame(
        {
            "uid": ["a", "b", "c"],
            "video_id": ["v", "v", "w"],
            "domain": ["s", "s", "t"],
            "split": ["train", "train", "test"],
            "start_sec": [0.0, 1.0, 2.0],
            "stop_sec": [0.5, 1.5, 2.5],
            "verb_class": [1, None, 2],
        }
    )
    store = cache_lib.create(tmp_path / "c.zarr", segments, manifest_sha256="0", recipe={})
    store.add_modality(
        "rgb",
        num_clips=2,
        num_features=4,
        info={"backbone": "x", "weights": None, "weights_sha256": None, "input_spec": {}},
        spatial_shape=(4, 2, 2),
    )
    store.write_clusters("rgb", np.array([0, -1, 1]), {"settings": {}})
    groups = {row[0]: row for row in _table("groups")}
    arrays = store.arrays()
    for name, array in arrays.items():
        group = name.split("/")[0]
        assert group in groups
        assert array.shape[0] == 3 and array.chunks[0] == store.chunk_rows
    assert arrays["features/rgb"].dtype == np.dtype(schema.FEATURE_DTYPE)
    assert arrays["spatial/rgb"].shape == (3, 2, 4, 2, 2)
    assert arrays["status/rgb"].dtype == np.dtype(schema.STATUS_DTYPE)
    assert arrays["clusters/rgb"].dtype == np.dtype(schema.CLUSTER_DTYPE)
    optional = set(schema.OPTIONAL_PROVENANCE_KEYS)
    assert set(store.provenance) - optional == set(schema.PROVENANCE_KEYS)
    assert "cache_id" in store.provenance
    entry = store.provenance["modalities"]["rgb"]
    assert set(entry) <= set(schema.MODALITY_KEYS) | set(schema.OPTIONAL_MODALITY_KEYS)
    assert store.segments["verb_class"].isna().tolist() == [False, True, False]
