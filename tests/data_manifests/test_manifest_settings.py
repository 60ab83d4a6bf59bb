"""DA settings as named views over a manifest, and `avda manifest stats`."""

from __future__ import annotations

import pandas as pd
import pytest

from avda.data_manifests import build, stats, stats_file
from avda.data_manifests.benchmarks import build_manifest
from avda.data_manifests.settings import (
    DG_SETTINGS,
    MMSADA_PAIRS,
    NAMED_SETTINGS,
    PARTS,
    Setting,
    resolve_setting,
    select,
)
from avda.errors import ConfigError


@pytest.fixture(scope="module")
def mmsada(shared_data):
    return build("epic55-mmsada", shared_data / "annotations").manifest


def test_the_six_mmsada_pairs_and_three_dg_settings():
    assert [s.name for s in MMSADA_PAIRS] == ["D1-D2", "D1-D3", "D2-D1", "D2-D3", "D3-D1", "D3-D2"]
    assert [(s.source_domains, s.target_domains) for s in DG_SETTINGS] == [
        (("D2", "D3"), ("D1",)),
        (("D1", "D3"), ("D2",)),
        (("D1", "D2"), ("D3",)),
    ]
    assert all(s.multi_source for s in DG_SETTINGS)
    assert NAMED_SETTINGS["epic100-uda"] == Setting(("source",), ("target",), "epic100-uda")


def test_resolve_source_target_forms():
    assert resolve_setting(source="D1", target="D2") == Setting(("D1",), ("D2",), "D1-D2")
    multi = resolve_setting(source="D1, D2", target="D3", known_domains=["D1", "D2", "D3"])
    assert multi.source_domains == ("D1", "D2") and multi.name == "D1,D2-D3"
    assert resolve_setting(setting="epic100-uda").target_domains == ("target",)
    assert resolve_setting(setting="D2,D3-D1") == DG_SETTINGS[0]
    assert resolve_setting(setting="ucf->hmdb").source_domains == ("ucf",)


def test_resolve_errors_say_what_to_do():
    with pytest.raises(ConfigError, match=r"unknown domain 'D4'; valid: D1, D2 \(setting D1-D4\)"):
        resolve_setting(source="D1", target="D4", known_domains=["D1", "D2"])
    with pytest.raises(ConfigError, match="either --setting or --source/--target"):
        resolve_setting(source="D1", target="D2", setting="D1-D2")
    with pytest.raises(ConfigError, match="give both --source and --target"):
        resolve_setting(source="D1")
    with pytest.raises(ConfigError, match="did you mean 'epic100-uda'"):
        resolve_setting(setting="epic100_uda")
    with pytest.raises(ConfigError, match="both source and target"):
        resolve_setting(source="D1,D2", target="D2")
    with pytest.raises(ConfigError, match="comma-separated"):
        resolve_setting(source="D1,,D2", target="D3")


def test_select_single_pair(mmsada):
    parts = select(mmsada, resolve_setting(setting="D1-D2"))
    assert list(parts) == list(PARTS)
    sizes = {name: len(frame) for name, frame in parts.items()}
    assert sizes == {
        "source_train": 1543,
        "source_val": 0,
        "source_test": 435,
        "target_train": 2495,
        "target_val": 0,
        "target_test": 750,
    }
    assert parts["target_train"]["verb_class"].isna().all()
    assert parts["target_train"]["narration"].isna().all()
    assert parts["target_test"]["verb_class"].notna().all()
    assert parts["source_train"]["verb_class"].notna().all()
    kept = select(mmsada, resolve_setting(setting="D1-D2"), keep_target_train_labels=True)
    assert kept["target_train"]["verb_class"].notna().all()


def test_select_multi_source(mmsada):
    parts = select(mmsada, resolve_setting(source="D1,D2", target="D3"))
    assert len(parts["source_train"]) == 1543 + 2495
    assert set(parts["source_train"]["domain"]) == {"D1", "D2"}
    assert len(parts["target_test"]) == 974


def test_select_unknown_domain_lists_the_manifest_domains(mmsada):
    with pytest.raises(ConfigError, match="valid: D1, D2, D3"):
        select(mmsada, resolve_setting(setting="epic100-uda"))


SMALL = pd.DataFrame(
    {
        "uid": ["a", "b", "c", "d", "e"],
        "video_id": ["v"] * 5,
        "domain": ["S", "S", "S", "T", "T"],
        "split": ["train", "train", "test", "train", "test"],
        "start_sec": [0.0] * 5,
        "stop_sec": [1.0] * 5,
        "verb_class": pd.array([0, 1, 1, None, 2], dtype="Int64"),
    }
)


def test_stats_of_a_small_manifest():
    text = stats(SMALL, {"verb_class": ("open", "close", "cut", "wash")})
    lines = text.splitlines()
    assert lines[0] == "rows: 5"
    table = text.split("rows per domain/split:\n")[1].split("\n\n")[0].splitlines()
    assert table[-3].split() == ["S", "2", "0", "1", "3"]
    assert table[-2].split() == ["T", "1", "0", "1", "2"]
    assert table[-1].split() == ["total", "3", "0", "2", "5"]
    assert "  verb_class: 4 in the class table, 3 present, 4 labelled rows" in lines
    distribution = text.split("verb_class distribution per domain/split:\n")[1].splitlines()
    assert distribution[0].split() == ["domain/split", "name", "S/train", "S/test", "T/test"]
    assert distribution[-3].split() == ["0", "open", "1", "0", "0"]
    assert distribution[-2].split() == ["1", "close", "1", "1", "0"]
    assert distribution[-1].split() == ["2", "cut", "0", "0", "1"]


def test_stats_counts_multi_labels_once_per_id():
    frame = SMALL.drop(columns=["verb_class"]).assign(labels=["1;3", "3", "", "0;1", "1"])
    text = stats(frame)
    assert "labels: 3 present, 4 labelled rows" in text
    rows = text.split("labels distribution per domain/split:\n")[1].splitlines()
    assert rows[0].split() == ["domain/split", "S/train", "T/train", "T/test"]
    assert rows[-1].split() == ["3", "2", "0", "0"]  # class 3: twice in S/train


def test_stats_file_uses_the_build_info(shared_data, tmp_path):
    path = tmp_path / "ucf.csv"
    build_manifest("ucf-hmdb", shared_data / "annotations", path, options=["variant=small"])
    text = stats_file(path)
    assert text.startswith(f"manifest {path} (benchmark ucf-hmdb)")
    assert "dropped when built: 2038 class not in the small class list" in text
    assert "verb_class: 5 in the class table, 5 present, 1171 labelled rows" in text
    assert "ride_horse" in text
