"""``avda flow``: TV-L1 and RAFT into EPIC u/v JPEGs, pair numbering, resuming, refusals."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from avda.data_manifests.demo import write_video
from avda.errors import CheckpointError, ConfigError
from avda.extract import flow
from avda.extract import frames as frames_lib

pytestmark = pytest.mark.usefixtures("one_thread")
SHIFT = (3, -2)  # (dx, dy) pixels per frame


def _manifest(video_id: str, **extra) -> pd.DataFrame:
    row = {
        "uid": f"{video_id}_0",
        "video_id": video_id,
        "domain": "d",
        "split": "train",
        "start_sec": 0.0,
        "stop_sec": 0.3,
        **extra,
    }
    return pd.DataFrame([row])


@pytest.fixture(scope="module")
def shifted_video(tmp_path_factory, shared_data) -> Path:
    """A lossless video of the Middlebury RubberWhale frame moving by SHIFT each frame."""
    image = Image.open(shared_data / "media" / "flow_pairs" / "rubberwhale1.png")
    image = np.asarray(image.convert("RGB").resize((144, 96), Image.BILINEAR))
    frames = np.stack([np.roll(image, (SHIFT[1] * t, SHIFT[0] * t), axis=(0, 1)) for t in range(3)])
    root = tmp_path_factory.mktemp("shifted")
    write_video(root / "shifted.mkv", frames, fps=10, codec="libx264rgb", crf=0)
    return root


def test_pairs_follow_furnari_flow_stride_and_dilation():
    np.testing.assert_array_equal(
        flow.pair_frames(6, 1, 1), [[1, 2], [2, 3], [3, 4], [4, 5], [5, 6]]
    )
    np.testing.assert_array_equal(flow.pair_frames(10, 2, 3), [[1, 4], [3, 6], [5, 8], [7, 10]])
    assert flow.pair_frames(1, 1, 1).shape == (0, 2)


def test_tvl1_recovers_a_known_shift_and_resumes(shifted_video, tmp_path):
    pytest.importorskip("cv2", reason="TV-L1 needs opencv-contrib-python-headless")
    manifest = _manifest("shifted", video_path="shifted.mkv")
    options = flow.FlowOptions(shorter_side=96, bound=20.0)
    out = tmp_path / "flow"
    result = flow.compute_flow(
        manifest, out=out, videos=shifted_video, options=options, progress=False
    )
    assert result.ok and (result.computed, result.skipped) == (2, 0)
    folder = out / "shifted"
    for j in (1, 2):
        u = np.asarray(Image.open(folder / "u" / f"frame_{j:010d}.jpg"))
        v = np.asarray(Image.open(folder / "v" / f"frame_{j:010d}.jpg"))
        assert u.shape == (96, 144)
        inner = (slice(10, -10), slice(10, -10))
        assert np.median(frames_lib.dequantise(u[inner], 20.0)) == pytest.approx(SHIFT[0], abs=0.3)
        assert np.median(frames_lib.dequantise(v[inner], 20.0)) == pytest.approx(SHIFT[1], abs=0.3)
    metadata = json.loads((folder / "flow.json").read_text())
    assert (metadata["method"], metadata["stride"], metadata["bound"]) == ("tvl1", 1, 20.0)
    # Resuming: finished flow frames are skipped; a lost one is recomputed.
    (folder / "v" / "frame_0000000002.jpg").unlink()
    again = flow.compute_flow(
        manifest, out=out, videos=shifted_video, options=options, progress=False
    )
    assert (again.computed, again.skipped) == (1, 1)
    # Other settings in the same folder are refused (unless --force).
    other = flow.FlowOptions(shorter_side=96, bound=8.0)
    refused = flow.compute_flow(
        manifest, out=out, videos=shifted_video, options=other, progress=False
    )
    assert not refused.ok and "bound: folder has 20.0" in refused.failures[0][1]
    # Without a finished pair other settings take the folder over where a run killed before
    # its first pair left it (one u half, temporaries): those go. More is not a stop's: kept.
    for path in [*(folder / "v").iterdir(), *(folder / "u").iterdir()]:
        path.unlink()
    (folder / "u" / "frame_0000000009.jpg").write_bytes(b"a half of another run's pair")
    (folder / "v" / "frame_0000000003.jpg").write_bytes(b"no u: not a stopped run's")
    refused = flow.compute_flow(
        manifest, out=out, videos=shifted_video, options=other, progress=False
    )
    assert not refused.ok and "holds 2 JPEG(s) in u/ and v/" in refused.failures[0][1]
    assert (folder / "v" / "frame_0000000003.jpg").exists()
    (folder / "v" / "frame_0000000003.jpg").unlink()
    (folder / "u" / ".frame_0000000010.jpg.partial").write_bytes(b"a killed write")
    taken = flow.compute_flow(
        manifest, out=out, videos=shifted_video, options=other, progress=False
    )
    assert taken.ok and taken.computed == 2
    assert json.loads((folder / "flow.json").read_text())["bound"] == 8.0
    assert sorted(p.name for p in (folder / "u").iterdir()) == [
        "frame_0000000001.jpg",
        "frame_0000000002.jpg",
    ]
    # Finished frames without a flow.json are not avda flow's: refused, as other settings.
    (folder / "flow.json").unlink()
    refused = flow.compute_flow(
        manifest, out=out, videos=shifted_video, options=options, progress=False
    )
    assert not refused.ok and "holds 2 flow frame(s) and no flow.json" in refused.failures[0][1]
    # ...as are a user's own frames of another naming, or u frames without their v: kept.
    held = {"named": ["u/img_00001.jpg"], "halves": ["u/frame_0000000001.jpg",
            "u/frame_0000000002.jpg"], "lone_v": ["v/frame_0000000001.jpg"]}  # fmt: skip
    for video_id, names in held.items():
        for name in names:
            (out / video_id / name).parent.mkdir(parents=True, exist_ok=True)
            (out / video_id / name).write_bytes(b"the user's")
    mine = flow.compute_flow(
        pd.concat([_manifest(video_id, video_path="shifted.mkv") for video_id in held]),
        out=out, videos=shifted_video, options=options, progress=False,
    )  # fmt: skip
    said = {video_id: " ".join(error.split()[1:5]) for video_id, error in mine.failures}
    assert said == {  # another naming: not avda flow's, whatever its record (below)
        "named": "holds 1 file(s) avda",
        "halves": "holds 2 JPEG(s) in",
        "lone_v": "holds 1 JPEG(s) in",
    }
    for video_id, names in held.items():
        kept = (out / video_id).rglob("*.*")  # nothing deleted, no flow.json written
        assert sorted(str(p.relative_to(out / video_id)) for p in kept) == names, video_id
    # --force recomputes frames a flow.json records, not ones without (another tool's: EPIC's
    # download is named as avda's): kept, refused
    forced = flow.compute_flow(
        manifest, out=out, videos=shifted_video, options=options, force=True, progress=False
    )
    assert "(--force deletes only frames a flow.json records)" in forced.failures[0][1]
    assert len(list(folder.rglob("frame_*.jpg"))) == 4
    # An unreadable record (avda flow writes it whole) is refused naming it; --force replaces
    # it (it failed in one line naming neither, or crashed the run on a list, even with --force)
    for text, why in (('{"method": "tv', "not JSON"), ("[1]", "a JSON list, not an object")):
        (folder / "flow.json").write_text(text)
        refused = flow.compute_flow(
            manifest, out=out, videos=shifted_video, options=options, progress=False
        )
        said = refused.failures[0][1] if refused.failures else ""
        assert f"2 flow frame(s) and {folder / 'flow.json'} unreadable ({why}" in said
        assert "--force" in said
        forced = flow.compute_flow(
            manifest, out=out, videos=shifted_video, options=options, force=True, progress=False
        )
        assert forced.ok and forced.computed == 2
    # The folder is an input of `avda extract --flow`: stride and bound come from flow.json.
    convention = frames_lib.flow_convention(folder, "shifted")
    assert (convention.stride, convention.bound, convention.source) == (1, 20.0, "flow.json")
    # ...and the video's rate: a manifest without fps, read without --videos, maps its
    # seconds to flow frames with it (it failed: "no frame rate; add an fps column").
    assert convention.fps == pytest.approx(10.0)
    from tests.extract.conftest import tiny

    from avda.cache import Status, open_cache
    from avda.extract import runner

    runner.extract(
        _manifest("shifted"),
        flow=out,
        out=tmp_path / "c.zarr",
        recipe=tiny("demo", resize_shorter=32, crop_size=32),
        modalities=[runner.ModalitySpec("flow", "i3d")],
        workers=0,
        progress=False,
    )
    store = open_cache(tmp_path / "c.zarr")
    assert store.status("flow").tolist() == [Status.DONE], store.errors("flow")


def test_other_tools_frames_are_neither_written_beside_nor_deleted(
    shifted_video, tmp_path, shared_data
):
    """A video folder holding files avda flow does not write is refused, --force or not, and
    kept whole: mmaction2's flat x_/y_ folder (taken over: u/ and v/ made beside it, which
    extract then read instead), a user's file in u/ beside frames of the same settings
    (written beside), a .png in a folder of other settings (--force deleted every .jpg of
    u/ and v/ and wrote beside the .png). A desktop's .DS_Store is no one's frames."""
    pytest.importorskip("cv2", reason="TV-L1 needs opencv-contrib-python-headless")
    options = flow.FlowOptions(shorter_side=96, bound=20.0)
    out = tmp_path / "flow"
    shutil.copytree(shared_data / "media" / "frames" / "mmaction2_imgs", out / "mm")
    done = flow.compute_flow(
        _manifest("mine", video_path="shifted.mkv"), out=out, videos=shifted_video,
        options=options, progress=False,
    )  # fmt: skip
    assert done.ok
    (out / "mine" / "u" / "notes.txt").write_text("the user's")
    (out / "mine" / "v" / ".DS_Store").write_bytes(b"")
    shutil.copytree(out / "mine", out / "other")
    (out / "other" / "u" / "notes.txt").unlink()
    (out / "other" / "u" / "frame_0000000001.png").write_bytes(b"another tool's")
    before = {video: _tree(out / video) for video in ("mm", "mine", "other")}
    manifest = pd.concat([_manifest(v, video_path="shifted.mkv") for v in before])
    for settings, force in ((options, False), (flow.FlowOptions(shorter_side=96), True)):
        result = flow.compute_flow(
            manifest, out=out, videos=shifted_video, options=settings, force=force,
            progress=False,
        )  # fmt: skip
        said = dict(result.failures)
        assert set(said) == set(before), said
        assert "holds 20 file(s) avda flow does not write (img_00001.jpg" in said["mm"]
        assert "holds 1 file(s) avda flow does not write (u/notes.txt)" in said["mine"]
        assert "(u/frame_0000000001.png)" in said["other"]
        assert "move them out of it" in said["other"]
        assert {video: _tree(out / video) for video in before} == before
    # the .DS_Store alone: the folder is avda's again, resumed
    (out / "mine" / "u" / "notes.txt").unlink()
    again = flow.compute_flow(
        _manifest("mine", video_path="shifted.mkv"), out=out, videos=shifted_video,
        options=options, progress=False,
    )  # fmt: skip
    assert again.ok and (again.computed, again.skipped) == (0, 2)
    # --force with other settings deletes avda's frames only, not the desktop's file
    forced = flow.compute_flow(
        _manifest("mine", video_path="shifted.mkv"), out=out, videos=shifted_video,
        options=flow.FlowOptions(shorter_side=96, bound=8.0), force=True, progress=False,
    )  # fmt: skip
    assert forced.ok and forced.computed == 2 and (out / "mine" / "v" / ".DS_Store").exists()


def test_extract_reads_no_flow_folder_being_written_or_left_unfinished(
    shifted_video, tmp_path, monkeypatch
):
    """`avda extract --flow` read a video folder an `avda flow` run was writing (or taking
    over, or deleting with --force), and one a stopped run left (.partial temporaries), as
    finished flow: it now fails the video naming the run, or the unfinished write."""
    pytest.importorskip("cv2", reason="TV-L1 needs opencv-contrib-python-headless")
    from tests.extract.conftest import tiny

    from avda.cache import Status, open_cache
    from avda.cache.lock import flow_lock, flow_read_lock
    from avda.extract import runner

    out = tmp_path / "flow"
    done = flow.compute_flow(
        _manifest("shifted", video_path="shifted.mkv"), out=out, videos=shifted_video,
        options=flow.FlowOptions(shorter_side=96), progress=False,
    )  # fmt: skip
    assert done.ok

    def extract(name: str) -> tuple[list[int], str]:
        runner.extract(
            _manifest("shifted"), flow=out, out=tmp_path / name, workers=0, progress=False,
            recipe=tiny("demo", resize_shorter=32, crop_size=32),
            modalities=[runner.ModalitySpec("flow", "i3d")],
        )  # fmt: skip
        store = open_cache(tmp_path / name)
        return store.status("flow").tolist(), str(store.errors("flow"))

    with flow_lock(out, "shifted"):
        status, errors = extract("held.zarr")
    assert status == [Status.FAILED] and "flow folder" in errors, errors
    assert "is being written by pid" in errors and "(avda flow)" in errors
    partial = out / "shifted" / "v" / ".frame_0000000002.jpg.partial"
    partial.write_bytes(b"a write a stop cut short")
    status, errors = extract("stopped.zarr")
    assert status == [Status.FAILED], errors
    assert "1 unfinished write(s) (.frame_0000000002.jpg.partial)" in errors
    partial.unlink()
    assert extract("read.zarr")[0] == [Status.DONE]
    with flow_read_lock(out / "shifted"):  # and a run started while extract reads: refused
        refused = flow.compute_flow(
            _manifest("shifted", video_path="shifted.mkv"), out=out, videos=shifted_video,
            options=flow.FlowOptions(shorter_side=96, bound=8.0), force=True, progress=False,
        )  # fmt: skip
    assert "is in use by pid" in refused.failures[0][1]
    assert "(avda extract --flow; a shared lock" in refused.failures[0][1]
    assert json.loads((out / "shifted" / "flow.json").read_text())["bound"] == 20.0
    # A folder recomputed between two segments (other settings) is read by its new record:
    # the reader kept for the video's next segment read its frames with the old bound.
    from avda.extract import backbones
    from avda.extract.inputs import InputPaths, SegmentDataset

    spec = backbones.create("tbn", modality="flow").input_spec
    dataset = SegmentDataset(
        pd.concat([_manifest("shifted")] * 2), np.array([0, 1]), InputPaths(flow=out),
        tiny("demo", resize_shorter=32, crop_size=32), "flow", spec, None,
    )  # fmt: skip
    assert dataset[0][2] == Status.DONE
    again = flow.compute_flow(
        _manifest("shifted", video_path="shifted.mkv"), out=out, videos=shifted_video,
        options=flow.FlowOptions(shorter_side=96, bound=8.0), force=True, progress=False,
    )  # fmt: skip
    assert again.ok and dataset[1][2] == Status.DONE
    assert dataset._open_readers["flow"][1].convention.bound == 8.0
    monkeypatch.setenv("AVDA_LOCK_WAIT", "60")  # or waits for the run, then reads
    held = threading.Event()

    def run_for_a_second() -> None:
        with flow_lock(out, "shifted"):
            held.set()
            time.sleep(1.0)

    running = threading.Thread(target=run_for_a_second)
    running.start()
    held.wait()
    assert dataset[0][2] == Status.DONE
    running.join()


def test_a_second_run_on_a_video_fails_it_and_runs_on_other_videos_write_beside(
    shifted_video, tmp_path
):
    """Two runs into one --out on one video (other settings, or a script started twice)
    would take over the folder the other is writing (its record rewritten, its temporaries
    deleted) or share its temporary files: the second fails that video at once, naming the
    first, nothing of the first's touched. Runs on other videos (an array of jobs split by
    video) are not held up by it, as they were not before the lock."""
    from avda.cache.lock import flow_lock

    out = tmp_path / "flow"
    (out / "shifted" / "u").mkdir(parents=True)
    (out / "shifted" / "u" / ".frame_0000000001.jpg.partial").write_bytes(b"being written")
    options = flow.FlowOptions(shorter_side=96, bound=8.0)
    with flow_lock(out, "shifted"):
        held = flow.compute_flow(
            _manifest("shifted", video_path="shifted.mkv"), out=out, videos=shifted_video,
            options=options, progress=False,
        )  # fmt: skip
        beside = flow.compute_flow(
            _manifest("other", video_path="shifted.mkv"), out=out, videos=shifted_video,
            options=options, progress=False,
        )  # fmt: skip
    ((video, said),) = held.failures
    assert video == "shifted" and re.search(r"flow folder .*shifted is being written by pid", said)
    assert sorted(p.name for p in (out / "shifted").rglob("*")) == [
        ".frame_0000000001.jpg.partial",
        "u",
    ]
    assert beside.ok and beside.computed > 0
    assert not list(out.glob(".flow*.lock"))  # the lock files go with their holders


def test_the_failures_list_is_the_runs_written_under_its_lock(tmp_path, monkeypatch):
    """OUT/flow.failures.csv keeps other videos' rows and replaces this run's; it was written
    by the CLI after the run let go of OUT's lock, so a second run could rewrite it between
    (read, then replace: one run's rows lost)."""
    pytest.importorskip("cv2", reason="TV-L1 needs opencv-contrib-python-headless")
    from avda._io import file_lock
    from avda.errors import LockWaitError

    monkeypatch.setenv("AVDA_LOCK_WAIT", "0")  # a lock held elsewhere: refused at once
    out = tmp_path / "flow"
    out.mkdir()
    listed = out / flow.FAILURES_LIST
    listed.write_text("video_id,error\nelsewhere,its decoder failed\ngone,an earlier error\n")
    real, held = flow.atomic_write_text, []

    def write(path, text):
        with pytest.raises(LockWaitError), file_lock(out / flow.FAILURES_LOCK):
            pass
        held.append(path)
        return real(path, text)

    monkeypatch.setattr(flow, "atomic_write_text", write)
    result = flow.compute_flow(
        _manifest("gone", video_path="gone.mkv"), out=out, videos=tmp_path, progress=False
    )
    assert not result.ok and held == [listed]
    rows = pd.read_csv(listed, dtype=str)
    assert rows["video_id"].tolist() == ["elsewhere", "gone"]
    assert rows["error"].iloc[1] != "an earlier error"


def test_real_pair_from_a_frame_folder_with_stride(tmp_path, shared_data):
    pytest.importorskip("cv2", reason="TV-L1 needs opencv-contrib-python-headless")
    folder = tmp_path / "frames" / "whale"
    folder.mkdir(parents=True)
    for i in (1, 2, 3):  # whale1, whale2, whale1: two pairs, stride 2 keeps the first
        name = "rubberwhale1.png" if i != 2 else "rubberwhale2.png"
        shutil.copy(shared_data / "media" / "flow_pairs" / name, folder / f"frame_{i:010d}.png")
    result = flow.compute_flow(
        _manifest("whale"),
        out=tmp_path / "flow",
        frames=tmp_path / "frames",
        options=flow.FlowOptions(shorter_side=96, stride=2),
        progress=False,
    )
    assert result.ok and result.computed == 1
    # the video's flow frames, for a reader of a folder that holds part of them
    assert json.loads((tmp_path / "flow" / "whale" / "flow.json").read_text())["frames"] == 1
    none = flow.compute_flow(
        _manifest("whale", fps=10.0, start_sec=5.0, stop_sec=6.0),
        out=tmp_path / "near",
        frames=tmp_path / "frames",
        options=flow.FlowOptions(shorter_side=96),
        segments_only=True,
        margin=0.5,
        progress=False,
    )
    assert none.ok and none.computed == 0  # no flow frame within 0.5 s of [5, 6] s
    u = np.asarray(Image.open(tmp_path / "flow" / "whale" / "u" / "frame_0000000001.jpg"))
    assert u.shape == (96, 144)  # 584 x 388 -> shorter side 96, even sides
    moving = np.abs(frames_lib.dequantise(u, 20.0)) > 0.5
    assert 0.01 < moving.mean() < 0.9  # the RubberWhale scene has moving and static parts


def test_raft_with_a_state_dict_in_the_published_layout(shifted_video, tmp_path, shared_data):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    model = raft_small(weights=None)
    manifest = json.loads(
        (shared_data / "checkpoint_keys" / "torchvision_raft_small.json").read_text()
    )
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {
        k: v["shape"] for k, v in manifest["keys"].items()
    }
    weights = tmp_path / "raft_small_C_T_V2.pth"
    torch.save(state, weights)  # torchvision's published files are plain state dicts
    options = flow.FlowOptions(method="raft", weights=weights, shorter_side=64, raft_updates=2)
    result = flow.compute_flow(
        _manifest("shifted", video_path="shifted.mkv"),
        out=tmp_path / "r",
        videos=shifted_video,
        options=options,
        batch_size=3,
        progress=False,
    )
    assert result.ok and result.computed == 2
    u = np.asarray(Image.open(tmp_path / "r" / "shifted" / "u" / "frame_0000000002.jpg"))
    assert u.shape == (64, 96) and u.dtype == np.uint8
    metadata = json.loads((tmp_path / "r" / "shifted" / "flow.json").read_text())
    assert metadata["weights_sha256"] and metadata["method"] == "raft"
    del state["update_block.flow_head.conv2.weight"]
    torch.save(state, weights)
    with pytest.raises(CheckpointError, match="missing 'update_block.flow_head.conv2.weight'"):
        flow.load_raft(weights)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="raft needs --weights"):
        flow.FlowOptions(method="raft")
    with pytest.raises(ConfigError, match="--bound must be positive"):
        flow.FlowOptions(bound=0)
    with pytest.raises(ConfigError, match="either --videos DIR or --frames DIR"):
        flow.compute_flow(_manifest("x"), out="unused")


def test_the_cli_computes_every_video_of_a_folder_without_a_manifest(
    shifted_video, tmp_path, capsys
):
    """`avda flow --videos DIR` computes every video whole, as `avda extract` reads a folder
    without a manifest (a new user found `-m` required); neither is one line."""
    pytest.importorskip("cv2", reason="TV-L1 needs opencv-contrib-python-headless")
    from avda import cli

    out = tmp_path / "flow"
    code = cli.main(["flow", "--videos", str(shifted_video), "-o", str(out), "--size", "32", "-q"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / "shifted" / "u").iterdir()) == [
        "frame_0000000001.jpg",
        "frame_0000000002.jpg",
    ]
    assert "1 videos, 2 flow frames computed" in capsys.readouterr().out
    code = cli.main(["flow", "-o", str(tmp_path / "none"), "-q"])
    err = capsys.readouterr().err
    assert code != 0 and "needs --manifest FILE, or --videos DIR" in err, err
    assert "Traceback" not in err


def _killed_flow(out: Path, videos: Path, when, sign: signal.Signals, *extra: str) -> list[str]:
    """A real ``avda flow`` of ``videos`` (test.avi: 20 flow frames at stride 8) into ``out``,
    sent ``sign`` once ``when(folder)`` holds for the video's folder (3 tries: a run that ends
    first is started again). The command's options, to run it again in the process."""
    options = ["flow", "--videos", str(videos), "-o", str(out), "--size", "48",
               "--stride", "8", "-q", *extra]  # fmt: skip
    folder = out / "test"
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "avda.cli", *options]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        try:
            while time.time() < deadline and process.poll() is None:
                if (folder / "flow.json").exists() and when(folder):
                    process.send_signal(sign)
                    process.wait(timeout=60)
                    return options
                time.sleep(0.005)
        finally:
            process.kill()
            process.wait()
    raise AssertionError(f"avda flow ended before it could be stopped: {process.stderr.read()}")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _files(folder: Path) -> dict[str, bytes]:
    return {f"{c}/{p.name}": p.read_bytes() for c in ("u", "v") for p in (folder / c).iterdir()}


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_files_and_a_folder_without_a_finished_frame_is_free(
    tmp_path, shared_data, capsys
):
    """A real SIGKILL part-way: a rerun with other settings is refused naming the folder and
    --force, the same settings finish it with the files of an uninterrupted run. A SIGTERM
    before the first pair is written whole leaves flow.json and no frame: other settings start
    it, without --force (it was refused, though nothing was finished there)."""
    pytest.importorskip("cv2", reason="TV-L1 needs opencv-contrib-python-headless")
    from avda import cli

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "test.avi").symlink_to(shared_data / "media" / "video" / "test.avi")
    whole = tmp_path / "whole"
    options = ["flow", "--videos", str(videos), "-o", str(whole), "--size", "48",
               "--stride", "8", "-q"]  # fmt: skip
    assert cli.main(options) == 0, capsys.readouterr().err
    reference = _files(whole / "test")
    assert len(reference) == 2 * 21  # 165 frames (test.avi's first repeats), stride 8

    out = tmp_path / "out"
    some = lambda folder: 2 <= len(list((folder / "v").glob("*.jpg"))) < 21  # noqa: E731
    options = _killed_flow(out, videos, some, signal.SIGKILL, "--batch-size", "1")
    capsys.readouterr()
    assert cli.main([*options, "--bound", "8"]) == cli.EXIT_FAILED_ITEMS
    said = (out / "flow.failures.csv").read_text()
    assert str(out / "test") in said and "--force" in said and "made differently" in said
    assert json.loads((out / "test" / "flow.json").read_text())["bound"] == 20.0
    with open(out / "flow.failures.csv", "a") as listed:  # another video's, of another run
        listed.write("elsewhere,its decoder failed\n")
    assert cli.main(options) == 0, capsys.readouterr().err
    assert "flow frames computed" in capsys.readouterr().out
    # the refusal's row is stale now; the other video's stays
    assert (
        out / "flow.failures.csv"
    ).read_text() == "video_id,error\nelsewhere,its decoder failed\n"
    assert _files(out / "test") == reference  # bit for bit, no file left from the kill
    assert not list((out / "test").rglob("*.partial"))

    none = lambda folder: not list((folder / "v").glob("*.jpg"))  # noqa: E731
    options = _killed_flow(out, videos, none, signal.SIGTERM, "--batch-size", "64")
    assert not list((out / "test" / "v").glob("*.jpg"))
    assert cli.main([*options, "--bound", "8"]) == 0, capsys.readouterr().err
    assert json.loads((out / "test" / "flow.json").read_text())["bound"] == 8.0
    assert len(_files(out / "test")) == 2 * 21
