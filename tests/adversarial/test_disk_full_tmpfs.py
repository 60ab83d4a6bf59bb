"""A truly full disk (``ENOSPC``, a small tmpfs; skipped where it cannot be mounted) for each
command that writes: one line naming the file or store and saying the disk is full, exit 1, no
traceback; nothing half-written recorded as done; the same command run again once space is
freed finishes as an uninterrupted run does. ``test_disk_full.py`` keeps the file-size limit
(``EFBIG``) way for ``avda train``, where a mount is not allowed."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest

from avda._io import os_error_line
from tests.adversarial._helpers import avda, disk_full_line, fill_disk, small_disk
from tests.conftest import make_feature_cache


@pytest.mark.slow
def test_cluster_on_a_full_disk_names_its_store_and_runs_again(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=8)
    command = ["cluster", "c.zarr", "--modality", "rgb", "--source", "source", "-q"]
    whole = avda(command, tmp_path)
    assert whole.returncode == 0, whole.stderr[-800:]
    with small_disk(tmp_path / "disk", "2m") as disk:
        shutil.copytree(
            tmp_path / "c.zarr", disk / "c.zarr", ignore=shutil.ignore_patterns("clusters")
        )
        filler = fill_disk(disk, 4096)
        disk_full_line(avda(command, disk), "c.zarr (writing the rgb clusters)")
        verify = avda(["cache", "verify", "c.zarr"], disk)
        assert verify.returncode == 0, verify.stderr[-800:]
        filler.unlink()
        again = avda(command, disk)
        assert again.returncode == 0, again.stderr[-800:]
        clusters = _clusters(disk / "c.zarr")
    assert np.array_equal(clusters, _clusters(tmp_path / "c.zarr"))


def _clusters(store) -> np.ndarray:
    from avda.cache import open_cache

    found = open_cache(store).read_clusters("rgb")
    assert found is not None
    return found[0]


def test_evaluate_out_on_a_full_disk_names_the_table_and_keeps_the_pair(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=8)
    train = ["train", "--cache", "c.zarr", "--head", "source-only", "--source", "source"]
    trained = avda([*train, "--target", "target", "-o", "so", "--epochs", "1", "-q"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-800:]
    command = ["evaluate", str(tmp_path / "so"), "-o", "res"]
    with small_disk(tmp_path / "disk", "1m") as disk:
        (disk / "res.csv").write_text("an earlier table")  # an earlier evaluate's
        filler = fill_disk(disk, 4096)  # res.md fits, res.csv does not
        disk_full_line(avda(command, disk), "res.csv")
        assert sorted(p.name for p in disk.iterdir()) == ["FILLER", "res.csv"]  # no new .md
        assert (disk / "res.csv").read_text() == "an earlier table"  # beside the old .csv
        filler.unlink()
        again = avda(command, disk)
        assert again.returncode == 0, again.stderr[-800:]
        written = (disk / "res.csv").read_text()
    assert avda([*command[:2], "-o", "whole"], tmp_path).returncode == 0
    assert written == (tmp_path / "whole.csv").read_text()


def test_manifest_build_on_a_full_disk_names_the_file_and_leaves_no_half(tmp_path, shared_data):
    annotations = shared_data / "annotations" / "epic55_mmsada_splits"
    command = ["manifest", "build", "epic55-mmsada", "-a", str(annotations), "--setting", "D1-D2"]
    assert avda([*command, "-o", "whole.csv"], tmp_path).returncode == 0
    size = (tmp_path / "whole.csv").stat().st_size
    with small_disk(tmp_path / "disk", "1m") as disk:
        # the manifest does not fit, then it and its lock file fit to the page, its record not
        for leave, names in (
            (100_000, "m.csv"),
            (-(-size // 4096) * 4096 + 4096, "m.csv.build.json"),
        ):
            filler = fill_disk(disk, leave)
            disk_full_line(avda([*command, "-o", "m.csv"], disk), names)
            assert sorted(p.name for p in disk.iterdir()) == ["FILLER"]  # no half manifest
            filler.unlink()
        again = avda([*command, "-o", "m.csv"], disk)
        assert again.returncode == 0, again.stderr[-800:]
        written = (disk / "m.csv").read_bytes()
    assert written == (tmp_path / "whole.csv").read_bytes()


@pytest.mark.slow
def test_a_sweep_run_that_fills_the_disk_fails_in_one_line_not_retried(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=8)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"cache: {tmp_path / 'c.zarr'}\nheads:\n  - name: source-only\n    epochs: 1\n"
        "settings: ['source->target']\nseeds: 1\nretries: 2\ncluster:\n  workers: 1\n"
    )
    command = ["sweep", str(spec), "--out", "sweep", "-q"]
    with small_disk(tmp_path / "disk", "1m") as disk:
        filler = fill_disk(disk, 60_000)  # the index fits, the run's checkpoint does not
        full = avda(command, disk)
        assert full.returncode == 3, full.stderr[-1500:]
        assert "Traceback" not in full.stderr and "Compute Failed" not in full.stderr
        failures = (disk / "sweep" / "sweep-failures.csv").read_text()
        assert "no space left on device: " in failures and "last.pt; free some space" in failures
        assert not (
            disk / "sweep" / "source-only" / "source-target" / "seed0" / "run.json"
        ).exists()
        filler.unlink()
        again = avda(command, disk)
        assert again.returncode == 0, again.stderr[-800:]
        assert "1 trained" in again.stdout


@pytest.mark.slow
def test_flow_on_a_full_disk_stops_naming_the_frame_and_resumes_to_the_same_files(
    tmp_path, shared_data
):
    """``avda flow`` stops at the first write that does not fit, in one line naming that file
    (it failed the video, tried every later one, then ended naming flow.failures.csv), with
    no later video started; the rerun after space is freed writes an uninterrupted run's."""
    pytest.importorskip("cv2", reason="TV-L1 needs opencv-contrib-python-headless")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.avi", "b.avi"):
        shutil.copy(shared_data / "media" / "video" / "test.avi", videos / name)
    command = ["flow", "--videos", str(videos), "--size", "32", "-q", "-o"]
    # PyAV: decord gave test.avi's last frame pair differently now and then, full disk or not
    pyav = {"AVDA_VIDEO_DECODER": "pyav"}
    whole = avda([*command, "whole"], tmp_path, **pyav)
    assert whole.returncode == 0, whole.stderr[-800:]
    with small_disk(tmp_path / "disk", "4m") as disk:  # two videos' 1.4 MB each fit
        for leave in (200_000, 40_000):  # inside a's frames, then at its first ones
            filler = fill_disk(disk, leave)
            full = avda([*command, "out"], disk, **pyav)
            last = full.stderr.strip().splitlines()[-1]
            assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-1500:]
            assert re.fullmatch(
                r"error: no space left on device: out/a/(flow\.json|[uv]/frame_\d{10}\.jpg); "
                r"free some space and run the command again",
                last,
            ), last
            assert not (disk / "out" / "b").exists()  # the run stopped there
            assert not list((disk / "out").glob(".flow*"))  # its lock files went with it
            filler.unlink()
        again = avda([*command, "out"], disk, **pyav)
        assert again.returncode == 0, again.stderr[-800:]
        written = _tree(disk / "out")
    assert written == _tree(tmp_path / "whole")


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_report_on_a_full_disk_names_the_page_and_keeps_the_earlier_one(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=8)
    train = ["train", "--cache", "c.zarr", "--head", "source-only", "--source", "source"]
    trained = avda([*train, "--target", "target", "-o", "so", "--epochs", "1", "-q"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-800:]
    command = ["report", str(tmp_path / "so"), "-o", "rep.html"]
    with small_disk(tmp_path / "disk", "1m") as disk:
        (disk / "rep.html").write_text("an earlier report")
        filler = fill_disk(disk, 4096)  # the page does not fit
        disk_full_line(avda(command, disk), "rep.html")
        assert sorted(p.name for p in disk.iterdir()) == ["FILLER", "rep.html"]  # no .tmp
        assert (disk / "rep.html").read_text() == "an earlier report"
        filler.unlink()
        again = avda(command, disk)
        assert again.returncode == 0, again.stderr[-800:]
        assert "</html>" in (disk / "rep.html").read_text()


STORE_WRITES = {  # a store's write (a Zarr chunk, ENOSPC naming no file): what its line says
    "the rgb features of rows 0-7": lambda store: store.write(
        "rgb", np.arange(8), np.ones((8, 2, 64)), np.ones(8), [""] * 8
    ),
    "the new flow arrays": lambda store: store.add_modality(
        "flow", num_clips=2, num_features=64, info={}
    ),
    "the appended rows 48-55": lambda store: store.append_segments(
        pd.DataFrame({"uid": [f"new{i}" for i in range(8)], "video_id": ["v"] * 8})
    ),
    "the rgb clusters": lambda store: store.write_clusters("rgb", np.zeros(48), {"k": 1}),
}


@pytest.mark.parametrize("what", list(STORE_WRITES))
def test_a_store_write_on_a_full_disk_names_the_store_and_what_it_wrote(tmp_path, what):
    # Zarr raises the write's OSError(ENOSPC) naming no file: the line named the command's
    # output alone (or nothing: 'no space left on device; free ...'), not what was written
    from avda.cache import open_cache

    with small_disk(tmp_path / "disk", "2m") as disk:
        make_feature_cache(disk / "c.zarr", per_class=4, D=64, chunk_rows=8)
        store = open_cache(disk / "c.zarr", mode="r+")
        fill_disk(disk, 0)
        with pytest.raises(OSError) as raised:
            STORE_WRITES[what](store)
    line = os_error_line(raised.value)
    assert line.startswith(f"no space left on device: {disk / 'c.zarr'} (writing {what}); free")
