"""A new user's CharadesEgo run end to end, on real video ids: the Audio-Adaptive authors'
one-view files (``version=v1-only``) made from real v0 rows, a tiny synthetic cache of the
manifest's rows, the ``audio-adaptive-charadesego`` protocol (half the first-person training
videos labelled), and ``avda evaluate``'s table; every number of the table is recomputed from
the run's stored predictions by the transcribed reference scorers (``test_map_references``:
the authors' ``AveragePrecisionMeter`` after ``torch.max`` over a video's clips, and the
official ``Charades_v1_classify.m``), and the table's columns are the paper's CharadesEgo
metric (Table 2: "CharadesEgo mAP (%)", published 26.3 taken in the authors' convention)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.data_manifests.test_charades_ego_windows import V1_EXTRA
from tests.evaluate.test_map_references import authors_meter_map, matlab_charades_v1_classify
from tests.train.test_audio_adaptive_multilabel import TINY, multilabel_store

from avda import runs
from avda.data_manifests import build
from avda.data_manifests.charades_ego import CLASS_FILES


def one_view_files(folder: Path) -> Path:
    """The four ``CharadesEgo_v1_*_only{3rd,1st}.csv`` of the v1 release, from real v0 rows:
    third-person videos as they are, their first-person pairs ``<id>EGO`` with the same
    actions (v0 has no first-person training video)."""
    source = Path(os.environ.get("AVDA_SHARED_DATA", "")) / "annotations" / "charadesego_v0"
    with open(source / "CharadesEgo_v0_train.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    rows = [r for r in rows if r[9].strip() and r[10].strip()][:40]
    third = [[*r, "No", ""] for r in rows]
    first = [[f"{r[0]}EGO", *r[1:], "Yes", r[0]] for r in rows]
    folder.mkdir()
    (folder / CLASS_FILES[1]).write_text((source / CLASS_FILES[0]).read_text())
    for name, file_rows in {
        "CharadesEgo_v1_train_only3rd.csv": third[:16],
        "CharadesEgo_v1_train_only1st.csv": first[:16],
        "CharadesEgo_v1_test_only3rd.csv": third[16:20],
        "CharadesEgo_v1_test_only1st.csv": first[20:],
    }.items():
        with open(folder / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*header, *V1_EXTRA])
            writer.writerows(file_rows)
    return folder


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    from avda.train.loop import train

    folder = tmp_path_factory.mktemp("charades-day")
    manifest = build(
        "charades-ego", one_view_files(folder / "CharadesEgo"), unit="windows", version="v1-only"
    ).manifest
    present = [[int(c) for c in text.split(";")] if text else [] for text in manifest["labels"]]
    rng = np.random.default_rng(0)
    cache = multilabel_store(
        folder / "c.zarr", manifest.to_dict("records"), present, 157, rng, noise=1.0
    )
    train(
        cache=cache,
        head="audio-adaptive",
        source=["third"],
        target=["first"],
        out=folder / "run",
        overrides={**TINY, "tasks": ["labels"]},
        protocol="audio-adaptive-charadesego",
        progress=False,
    )
    return manifest, folder / "run"


def test_the_table_is_the_papers_metric_recomputed_by_the_reference_scorers(day):
    from avda.evaluate.aggregate import aggregate

    manifest, run = day
    stored = runs.read_predictions(run, "target_test")
    # the test rows are the 20 first-person test videos' 10 clips each, grouped by video
    tested = manifest[(manifest["domain"] == "first") & (manifest["split"] == "test")]
    assert len(stored["uids"]) == len(tested) == 200
    videos = list(pd.unique(tested["score_group"]))
    assert all(v.endswith("EGO") for v in videos) and len(videos) == 20
    scores, labels = stored["scores"]["labels"], stored["labels"]["labels"]
    groups = stored["groups"]
    per_video = np.stack([scores[groups == v].max(axis=0) for v in videos])
    video_labels = np.stack([labels[groups == v][0] for v in videos])
    authors = authors_meter_map(per_video, video_labels)
    present = video_labels.sum(axis=0) > 0
    assert 0 < present.sum() < 157  # classes without positives: the conventions differ
    _, official = matlab_charades_v1_classify(per_video[:, present], video_labels[:, present])
    assert math.isfinite(authors) and authors != pytest.approx(official)

    table = aggregate([run])
    assert table.columns == ["third→first mAP-present", "third→first mAP-authors"]
    method = table.methods[0]
    cells = {column: table.cell(method, column)[0] for column in table.columns}
    assert cells["third→first mAP-authors"] == pytest.approx(100 * authors, abs=1e-4)
    assert cells["third→first mAP-present"] == pytest.approx(100 * official, abs=1e-4)


def test_the_runs_summary_and_table_show_the_authors_convention_too(day):
    """``avda train``'s summary, ``run.json`` and ``avda evaluate``'s default (runs) table
    showed ``target_test/labels/mAP`` alone, the ``mAP-present`` convention, while the paper's
    26.3 is read in the authors' (only ``--layout settings`` showed it)."""
    from avda.evaluate.tables import choose_columns, results_table

    manifest, run = day
    stored = runs.read_predictions(run, "target_test")
    scores, labels = stored["scores"]["labels"], stored["labels"]["labels"]
    videos = list(pd.unique(stored["groups"]))
    per_video = np.stack([scores[stored["groups"] == v].max(axis=0) for v in videos])
    video_labels = np.stack([labels[stored["groups"] == v][0] for v in videos])
    authors = authors_meter_map(per_video, video_labels)
    recorded = json.loads((run / runs.STATUS).read_text())["metrics"]
    assert recorded["target_test/labels/mAP-authors"] == pytest.approx(authors, abs=1e-6)
    assert recorded["target_test/labels/mAP"] > recorded["target_test/labels/mAP-authors"]
    table = choose_columns(results_table([run]), "target_test", None, "mAP-authors")
    assert list(table.columns[-1:]) == ["target_test/labels/mAP-authors"]
    assert table.iloc[0, -1] == pytest.approx(100 * authors, abs=1e-4)


def test_avda_predict_prints_the_authors_convention_beside_map(day, tmp_path, capsys):
    """``avda predict`` printed ``labels mAP`` alone (``mAP-present``) for a multi-label set,
    the number a user set beside the paper's 26.3, though its summary names both."""
    from avda import cli

    manifest, run = day
    recorded = json.loads((run / runs.STATUS).read_text())["metrics"]
    code = cli.main(["predict", str(run), "-o", str(tmp_path / "p.npz"), "--split", "test",
                     "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("target_test:"))
    present = 100 * recorded["target_test/labels/mAP"]
    authors = 100 * recorded["target_test/labels/mAP-authors"]
    assert f"labels mAP (mAP-present) {present:.1f}%" in line, line
    assert f"labels mAP-authors {authors:.1f}%" in line, line
