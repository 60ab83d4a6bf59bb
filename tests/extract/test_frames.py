"""EPIC-style frame and flow folders as inputs: layouts, index conversion, flow tensors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tests.extract.conftest import tiny
from tests.extract.test_sampling import reference_tbn_test

from avda.cache import Status, open_cache
from avda.errors import CacheError, ConfigError, MediaError
from avda.extract import backbones, runner
from avda.extract import frames as frames_lib
from avda.extract.inputs import InputPaths, SegmentDataset
from avda.extract.sampling import SegmentFrames
from avda.extract.transforms import centre_crop, model_input

pytestmark = pytest.mark.usefixtures("one_thread")


def _read(path, mode):
    return frames_lib.read_image(path, shorter_side=64, mode=mode)


def test_flow_conventions_of_epic_ids_and_flow_json(tmp_path):
    assert frames_lib.epic_convention("P01_01") == frames_lib.FlowConvention(
        stride=2, bound=25.0, dilation=3, source="epic-55"
    )
    assert frames_lib.epic_convention("P30_107").stride == 1
    assert frames_lib.epic_convention("P30_107").bound == 8.0
    assert frames_lib.epic_convention("v_GGSY1Qvo990") is None
    assert frames_lib.flow_convention(tmp_path, "clip", None).ratio == 1.0
    assert frames_lib.flow_convention(tmp_path, "P01_01", 1).stride == 1  # the option wins
    (tmp_path / "flow.json").write_text(json.dumps({"stride": 3, "bound": 15, "dilation": 1}))
    found = frames_lib.flow_convention(tmp_path, "P01_01", None)
    assert (found.stride, found.bound, found.source) == (3, 15.0, "flow.json")


def test_quantisation_follows_the_furnari_flow_convention():
    bound = 8.0
    values = np.array([-100.0, -8.0, 0.0, 8.0, 100.0, 1.0])
    q = frames_lib.quantise(values, bound)
    assert q.tolist() == [0, 0, 128, 255, 255, round(255 * 9 / 16)]
    assert np.all(np.abs(frames_lib.dequantise(q[1:4], bound) - values[1:4]) <= bound / 255 + 1e-5)


def test_real_tsn_named_folders_are_read(media):
    folder = media / "frames" / "mmaction2_imgs"
    rgb = frames_lib.RgbFrames(folder)
    flow = frames_lib.FlowFrames(folder, frames_lib.FlowConvention(stride=2, bound=20))
    assert (rgb.count, flow.count) == (10, 5)
    x = flow.read(np.array([3, 99]), shorter_side=None)  # 99 clamps to the last frame
    assert x.shape == (2, 240, 320, 2) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[0, ..., 0], _raw(folder / "x_00003.jpg"))
    np.testing.assert_array_equal(x[1, ..., 1], _raw(folder / "y_00005.jpg"))
    assert abs(float(x.mean()) - 128) < 10  # 128 = no motion


def test_a_folder_of_two_tools_frames_is_refused_not_read_as_one(media, tmp_path):
    """Frames of two namings in one folder (a tool's .png beside avda's .jpg of the same
    numbers, flow_x_ beside x_, TSN's flat x_/y_ beside u/ and v/) are refused naming both:
    one set was read, which one depending on the order the folder listed its files."""
    tsn = media / "frames" / "mmaction2_imgs"
    convention = frames_lib.FlowConvention(stride=1, bound=20)
    both = tmp_path / "both"  # avda's u/ v/ beside TSN's x_ y_
    shutil.copytree(tsn, both)
    for component, prefix in (("u", "x_"), ("v", "y_")):
        (both / component).mkdir()
        for j in range(1, 6):
            shutil.copy(tsn / f"{prefix}{j:05d}.jpg", both / component / f"frame_{j:010d}.jpg")
    with pytest.raises(MediaError, match=r"holds u/ and v/ and 10 flow frame\(s\) beside"):
        frames_lib.FlowFrames(both, convention)
    for name in (f"{p}{j:05d}.jpg" for p in ("x_", "y_") for j in range(1, 6)):
        (both / name).unlink()
    assert frames_lib.FlowFrames(both, convention).count == 5  # u/ and v/ alone: read
    (both / "u" / "frame_0000000002.png").write_bytes(b"another tool's")
    with pytest.raises(MediaError, match=r"two files of frame number 2 \(frame_0000000002\.j"):
        frames_lib.FlowFrames(both, convention)
    named = tmp_path / "named"  # x_ beside flow_x_ (other numbers)
    shutil.copytree(tsn, named)
    (named / "x_00003.jpg").rename(named / "flow_x_00003.jpg")
    with pytest.raises(MediaError, match=r"named in 2 ways \(flow_x_00003\.jpg, x_00001\.jpg"):
        frames_lib.FlowFrames(named, convention)


def _raw(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"))


def test_ta3n_items_read_the_frames_tbn_would(epic_folders, monkeypatch):
    """RGB snippet frames and 5-frame flow stacks (EPIC-55 half-rate flow) of a segment."""
    rgb_root, flow_root, manifest = epic_folders
    real_open, written = os.open, []

    def open_recorded(path, flags, *args, **kwargs):  # a lock file made, even if deleted after
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and Path(path).is_relative_to(flow_root):
            written.append(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_recorded)
    recipe = tiny("ta3n")
    inputs = InputPaths(frames=rgb_root, flow=flow_root)
    segments = manifest.iloc[[0]]
    for modality in ("rgb", "flow"):
        model_spec = backbones.create("tbn", modality=modality).input_spec
        dataset = SegmentDataset(
            segments, np.array([0]), inputs, recipe, modality, model_spec, None
        )
        row, x, status, error = dataset[0]
        assert status == Status.DONE, error
        # EPIC's flow (no flow.json): not avda flow's, read without its lock, none made
        assert not written and not list(flow_root.rglob(".flow.*"))
        if modality == "rgb":
            numbers = reference_tbn_test(2, 10, new_length=1, ratio=1.0)
            expected = [
                _read(rgb_root / "P01" / "P01_01" / f"frame_{n:010d}.jpg", "RGB")
                for n in numbers[:, 0]
            ]
            expected = centre_crop(np.stack(expected), 64)[:, None]
        else:
            numbers = np.clip(reference_tbn_test(2, 10, new_length=5, ratio=0.5), 1, 5)
            u = [
                _read(flow_root / "P01_01" / "u" / f"frame_{n:010d}.jpg", "L")
                for n in numbers.reshape(-1)
            ]
            v = [
                _read(flow_root / "P01_01" / "v" / f"frame_{n:010d}.jpg", "L")
                for n in numbers.reshape(-1)
            ]
            expected = centre_crop(np.stack([np.stack(u), np.stack(v)], axis=-1), 64)
            expected = expected.reshape(25, 5, 64, 64, 2)  # (K*T, H, W, 2) -> (K, T, H, W, 2)
        np.testing.assert_array_equal(x.numpy(), expected)


def test_flow_tensors_for_i3d_and_tbn():
    clip = torch.arange(2 * 5 * 4 * 4 * 2, dtype=torch.int64).reshape(2, 5, 4, 4, 2) % 256
    clip = clip.to(torch.uint8)  # (B, T, H, W, (u, v))
    i3d = backbones.create("i3d", modality="flow").input_spec
    x = model_input(clip, i3d, normalisation="mmsada")
    assert x.shape == (2, 2, 5, 4, 4)  # (B, (u, v), T, H, W)
    torch.testing.assert_close(x[:, 0], clip[..., 0].float() / 128 - 1)
    tbn = backbones.create("tbn", modality="flow").input_spec
    x = model_input(clip, tbn)
    assert x.shape == (2, 10, 4, 4)  # TSN stack [u_t, v_t, u_t+1, v_t+1, ...] - 128
    torch.testing.assert_close(x[:, 2], clip[:, 1, ..., 0].float() - 128)
    torch.testing.assert_close(x[:, 3], clip[:, 1, ..., 1].float() - 128)


def test_extract_from_frame_folders_and_refuse_other_inputs(epic_folders, tmp_path):
    rgb_root, flow_root, manifest = epic_folders
    recipe = tiny("ta3n")
    out = tmp_path / "tbn.zarr"
    specs = [runner.ModalitySpec("rgb", "tbn"), runner.ModalitySpec("flow", "tbn")]
    options = dict(recipe=recipe, modalities=specs, workers=0, progress=False, batch_size=25)
    result = runner.extract(manifest, out=out, frames=rgb_root, flow=flow_root, **options)
    assert result.ok and result.done == 4, result.failures
    store = open_cache(out)
    assert store.features("flow").shape == (2, 25, 1024)
    assert store.modality_info("rgb")["input"] == {"source": "frames"}
    assert store.modality_info("flow")["input"] == {"source": "flow-frames", "flow_stride": "auto"}
    assert not np.allclose(store.load("flow")[0], store.load("flow")[1])
    # The same store asked to read RGB from videos (or flow with another stride) is refused.
    with pytest.raises(CacheError, match="input: store has .*'frames'"):
        runner.extract(manifest, out=out, videos=tmp_path, flow=flow_root, **options)
    with pytest.raises(CacheError, match="flow_stride"):
        runner.extract(manifest, out=out, frames=rgb_root, flow=flow_root, flow_stride=1, **options)
    # RGB frame folders without a rate for a segment: one error before any work (each segment
    # failed "no frame rate" once the run had started)
    bare = manifest.drop(columns=[c for c in ("fps", "start_frame", "stop_frame")
                                  if c in manifest]).iloc[:1]  # fmt: skip
    with pytest.raises(ConfigError, match=r"1 of 1 segments \(first: .*\) have no frame rate "
                       r"for the RGB frame folders.*add an fps column"):  # fmt: skip
        runner.extract(bare, out=tmp_path / "bare.zarr", frames=rgb_root, flow=flow_root,
                       **options)  # fmt: skip
    assert not (tmp_path / "bare.zarr").exists()
    InputPaths(frames=rgb_root).check_rates(manifest, ["rgb"])  # the frame columns suffice


def test_missing_folders_and_inputs_are_reported(epic_folders, tmp_path):
    rgb_root, flow_root, manifest = epic_folders
    with pytest.raises(ConfigError, match="--flow DIR"):
        InputPaths(frames=rgb_root).check(["flow"])
    with pytest.raises(ConfigError, match="--frames .*no such folder"):
        InputPaths(frames=tmp_path / "nope").check(["rgb"])
    with pytest.raises(MediaError, match="no rgb frame folder for video 'P02_03'"):
        frames_lib.locate(rgb_root, "P02_03", None, "rgb")
    shutil.rmtree(flow_root / "P01_01" / "v")
    (flow_root / "P01_01" / "v").mkdir()
    spec = backbones.create("tbn", modality="flow").input_spec
    dataset = SegmentDataset(
        manifest, np.array([0]), InputPaths(flow=flow_root), tiny("ta3n"), "flow", spec, None
    )
    _, x, status, error = dataset[0]
    assert x is None and status == Status.FAILED and "holds no frame images" in error


@pytest.mark.parametrize("kind", ["rgb", "flow"])
def test_frame_folders_of_other_videos_are_refused_in_one_line(epic_folders, tmp_path, kind):
    """--frames/--flow DIR holding none of the manifest's videos' folders: one error before any
    segment is read, the rows left pending, as a --videos or --audio folder of other videos (it
    was a warning per segment and a store of failed rows); one video there is enough to go on
    (the others fail their own segments)."""
    rgb_root, flow_root, manifest = epic_folders
    extra = manifest.iloc[:1].assign(uid="P01_02_0", video_id="P01_02")  # none anywhere
    manifest = pd.concat([manifest, extra], ignore_index=True)
    other = tmp_path / "other"
    (other / "P99_01").mkdir(parents=True)
    roots = {"frames": rgb_root, "flow": flow_root}
    roots["frames" if kind == "rgb" else "flow"] = other
    specs = [runner.ModalitySpec(kind, "tbn")]
    options = dict(recipe=tiny("ta3n"), modalities=specs, workers=0, progress=False, **roots)
    with pytest.raises(ConfigError) as refused:
        runner.extract(manifest, out=tmp_path / "c.zarr", **options)
    option = "--frames" if kind == "rgb" else "--flow"
    message = str(refused.value)
    videos = manifest["video_id"].nunique()
    assert message.startswith(f"none of the {videos} video(s) the manifest names has a")
    assert f"{kind} frame folder in {other} ({option}; the first: no {kind} frame " in message
    assert f"give {option} the folder they are in" in message and "\n" not in message
    assert np.all(open_cache(tmp_path / "c.zarr").status(kind) == Status.PENDING)
    found = frames_lib.locate(rgb_root if kind == "rgb" else flow_root, "P01_01", "P01", kind)
    shutil.copytree(found, other / "P01_01")
    result = runner.extract(manifest, out=tmp_path / "c.zarr", **options)  # one is enough
    assert (result.done, result.failed) == (2, 1)  # P01_02's row fails on its own


def test_segment_without_frame_columns_uses_seconds_and_fps():
    segment = SegmentFrames.from_seconds("u", 0.5, 1.0, 30.0)
    assert (segment.start_frame, segment.stop_frame) == (16, 31)
    assert tiny("mmsada-test").rgb_numbers(segment).shape == (5, 16)


def _flow_folder(folder, numbers, *, first_file=1):
    """EPIC u/v JPEGs of frames ``numbers`` (content depends on the frame number only), named
    from ``first_file`` for frame 1 (1: EPIC's 1-based names, 0: a 0-based folder)."""
    for component in ("u", "v"):
        (folder / component).mkdir(parents=True)
        for n in numbers:
            rng = np.random.default_rng([n, component == "v"])
            image = rng.integers(0, 256, size=(24, 32), dtype=np.uint8)
            name = f"frame_{n - 1 + first_file:010d}.jpg"
            Image.fromarray(image).save(folder / component / name, quality=100)


def test_file_numbers_are_frame_numbers_in_partial_and_zero_based_folders(tmp_path):
    # `avda flow --segments-only` writes only flow frames near segments: a folder whose first
    # file is frame 11. Its frame 15 is file 15 (it was read from the folder's 15th file,
    # frame 25, and stored as done); a frame it lacks is an error naming what it holds.
    whole, partial, zero = tmp_path / "whole", tmp_path / "partial", tmp_path / "zero"
    _flow_folder(whole, range(1, 41))
    _flow_folder(partial, range(11, 41))
    _flow_folder(zero, range(1, 41), first_file=0)
    convention = frames_lib.FlowConvention(stride=1, bound=20.0)
    readers = [frames_lib.FlowFrames(f, convention) for f in (whole, partial, zero)]
    assert [r.count for r in readers] == [40, 40, 40]
    wanted = np.array([15, 11, 40, 44, 20])  # 44 repeats the last frame
    expected = readers[0].read(wanted, shorter_side=None)
    for reader in readers[1:]:
        np.testing.assert_array_equal(reader.read(wanted, shorter_side=None), expected)
    with Image.open(whole / "u" / "frame_0000000015.jpg") as image:
        np.testing.assert_array_equal(expected[0, ..., 0], np.asarray(image))
    with pytest.raises(
        MediaError,
        match=r"partial/u has no frame 5 \(nor 1 more\): it holds 30 frames numbered 11..40; "
        r"a flow folder of `avda flow --segments-only`",
    ):
        readers[1].read(np.array([5, 6, 12]), shorter_side=None)
    # through extraction: a segment inside the partial folder gets the whole folder's features
    manifest = pd.DataFrame(
        {
            "uid": ["inside", "before"],
            "video_id": ["clip", "clip"],
            "domain": ["d", "d"],
            "split": ["train", "train"],
            "start_sec": [1.5, 0.1],
            "stop_sec": [3.0, 0.9],
            "fps": [10.0, 10.0],
        }
    )
    stores = []
    for name, folder in (("whole", whole), ("partial", partial)):
        root = tmp_path / f"{name}-root"
        root.mkdir()
        shutil.copytree(folder, root / "clip")
        runner.extract(
            manifest,
            flow=root,
            out=tmp_path / f"{name}.zarr",
            recipe=tiny("demo", resize_shorter=24, crop_size=24),
            modalities=[runner.ModalitySpec("flow", "i3d")],
            workers=0,
            progress=False,
        )
        stores.append(open_cache(tmp_path / f"{name}.zarr"))
    assert stores[0].status("flow").tolist() == [Status.DONE, Status.DONE]
    assert stores[1].status("flow").tolist() == [Status.DONE, Status.FAILED]
    np.testing.assert_array_equal(stores[1].load("flow")[0], stores[0].load("flow")[0])
    assert "has no frame 1" in stores[1].errors("flow")[1]


def test_a_folder_that_ends_before_its_video_fails_past_its_last_file(tmp_path):
    # A --segments-only folder of a video's first seconds (flow frames 1..20 of 40, no gaps)
    # looked whole: frames past 20 repeated frame 20 and were stored as done. flow.json now
    # records the video's flow frames.
    early = tmp_path / "clip"
    _flow_folder(early, range(1, 21))
    held = frames_lib.FlowFrames(early, frames_lib.FlowConvention(stride=1, bound=20.0, frames=40))
    assert held.count == 40 and held.u.partial
    np.testing.assert_array_equal(
        held.read(np.array([3, 20]), shorter_side=None),
        frames_lib.FlowFrames(early, frames_lib.FlowConvention(stride=1, bound=20.0)).read(
            np.array([3, 20]), shorter_side=None
        ),
    )
    for past in ([21, 30], [44]):  # 44: past the video, its last frame (40), not held either
        with pytest.raises(MediaError, match=r"has no frame .*holds 20 frames numbered "
                           r"1..20 of the video.s 40; a flow folder of `avda flow "
                           r"--segments-only`"):  # fmt: skip
            held.read(np.array(past), shorter_side=None)
    # read through flow.json, in extraction; and a manifest fps that is not the flow's video's
    (early / "flow.json").write_text(json.dumps({"stride": 1, "bound": 20.0, "fps": 10.0,
                                                 "frames": 40}))  # fmt: skip
    manifest = pd.DataFrame(
        {
            "uid": ["early", "late", "other-rate"],
            "video_id": ["clip"] * 3,
            "domain": ["d"] * 3,
            "split": ["train"] * 3,
            "start_sec": [0.2, 2.5, 0.2],
            "stop_sec": [1.5, 3.8, 0.8],
            "fps": [10.0, 10.0, 20.0],
        }
    )
    runner.extract(
        manifest,
        flow=tmp_path,
        out=tmp_path / "f.zarr",
        recipe=tiny("demo", resize_shorter=24, crop_size=24),
        modalities=[runner.ModalitySpec("flow", "i3d")],
        workers=0,
        progress=False,
    )
    store = open_cache(tmp_path / "f.zarr")
    assert store.status("flow").tolist() == [Status.DONE, Status.FAILED, Status.FAILED]
    assert "has no frame 24 (nor 16 more)" in store.errors("flow")[1]
    assert (
        "the manifest's fps says 20 fps, but " in store.errors("flow")[2]
        and "flow was computed from a 10 fps video; fix the fps" in store.errors("flow")[2]
    )
