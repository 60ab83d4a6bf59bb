"""The PyAV video decoder against decord on every real video file: frame count, timestamps,
pixels (native size and resized), seconds -> frames, a whole extraction; and avda without
decord (as on aarch64 / macOS, where decord has no wheels)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import shared_data_dir
from tests.extract.conftest import every_frame_in_order, tiny

from avda import cli
from avda.cache import Status, open_cache
from avda.errors import ConfigError
from avda.extract import decode
from avda.extract.decode import (
    DecordVideoDecoder,
    PyAVVideoDecoder,
    VideoDecoder,
    video_backend,
)

VIDEOS = sorted(p.name for p in (shared_data_dir() / "media" / "video").glob("*.*"))
needs_decord = pytest.mark.skipif(not decode.decord_available(), reason="decord not installed")

# Measured with PyAV 18 (FFmpeg 7) against decord 0.6.0 (its own FFmpeg 4) on these files:
# every frame equal, at native size and resized (shorter side 64 and 224). The bound leaves
# room for another FFmpeg's swscale rounding.
RESIZED_MEAN_ABS_BOUND = 0.5


def _indices(n: int, seed: int) -> np.ndarray:
    """First, middle, last, random, repeated, unsorted."""
    rng = np.random.default_rng(seed)
    return np.array([n // 2, 0, n - 1, *rng.integers(0, n, 6), 3, 3, n - 1, 1, n // 2])


@pytest.fixture
def no_decord(monkeypatch):
    """decord unimportable, as where it has no wheel."""
    monkeypatch.delenv(decode.DECODER_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "decord", None)


def test_every_real_video_is_tested():
    assert len(VIDEOS) >= 5, VIDEOS


# --------------------------------------------------------------------------- backend choice
@needs_decord
def test_selection_by_environment_and_keyword(monkeypatch, media):
    path = media / "video" / "demo.mp4"
    monkeypatch.delenv(decode.DECODER_ENV, raising=False)
    assert video_backend() == "decord"
    assert isinstance(VideoDecoder(path), DecordVideoDecoder)
    monkeypatch.setenv(decode.DECODER_ENV, "pyav")
    decoder = VideoDecoder(path)
    assert isinstance(decoder, PyAVVideoDecoder) and decoder.backend == "pyav"
    assert isinstance(VideoDecoder(path, backend="decord"), DecordVideoDecoder)  # keyword wins
    monkeypatch.setenv(decode.DECODER_ENV, "opencv")
    with pytest.raises(ConfigError, match="unknown video decoder"):
        VideoDecoder(path)


def test_decord_requested_but_not_installed_is_one_config_error(no_decord, monkeypatch, media):
    assert video_backend() == "pyav"
    monkeypatch.setenv(decode.DECODER_ENV, "decord")
    with pytest.raises(ConfigError) as info:
        VideoDecoder(media / "video" / "demo.mp4")
    assert "decord is not installed" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- against decord
@needs_decord
@pytest.mark.parametrize("name", VIDEOS)
def test_count_timestamps_and_native_frames_equal_decord(media, name):
    path = media / "video" / name
    ours = VideoDecoder(path, backend="pyav")
    theirs = VideoDecoder(path, backend="decord")
    assert ours.num_frames == theirs.num_frames
    assert ours.fps == pytest.approx(theirs.fps, rel=1e-6)
    np.testing.assert_allclose(ours.timestamps, theirs.timestamps, atol=1e-3, rtol=0)
    assert np.all(np.diff(ours.timestamps) > 0)
    assert ours.duration == pytest.approx(theirs.duration, abs=1e-3)
    indices = _indices(ours.num_frames, seed=len(name))
    frames = ours.frames(indices)
    assert frames.dtype == np.uint8 and frames.shape == (len(indices), *theirs.size[::-1], 3)
    np.testing.assert_array_equal(frames, theirs.frames(indices))


@needs_decord
@pytest.mark.parametrize("name", VIDEOS)
@pytest.mark.parametrize("shorter_side", [64, 224])
def test_resized_frames_match_decord(media, name, shorter_side):
    path = media / "video" / name
    ours = VideoDecoder(path, shorter_side=shorter_side, backend="pyav")
    theirs = VideoDecoder(path, shorter_side=shorter_side, backend="decord")
    assert ours.size == theirs.size
    indices = _indices(ours.num_frames, seed=shorter_side)
    a, b = ours.frames(indices), theirs.frames(indices)
    assert a.shape == b.shape
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() <= RESIZED_MEAN_ABS_BOUND


@needs_decord
def test_every_frame_of_the_avi_in_display_order(media):
    """MPEG-4 part 2 with packed B-frames: the decoder hands frames out with their neighbours'
    pts; and decord's own timestamps for its B-frames are invalid, so avda's decord backend
    decodes this file with PyAV: compared with decord itself reading every frame in order
    (right on every call; its seeks, which find frames by those timestamps, are not)."""
    decord = pytest.importorskip("decord")
    path = media / "video" / "test.avi"
    ours, theirs = VideoDecoder(path, backend="pyav"), VideoDecoder(path, backend="decord")
    everything = np.arange(ours.num_frames)
    in_order = decord.VideoReader(str(path), num_threads=1).get_batch(everything.tolist())
    np.testing.assert_array_equal(ours.frames(everything), in_order.asnumpy())
    np.testing.assert_array_equal(theirs.frames(everything), in_order.asnumpy())
    np.testing.assert_allclose(theirs.timestamps, (everything + 1) / 25, atol=1e-6)
    np.testing.assert_allclose(ours.timestamps, (everything + 1) / 25, atol=1e-9)


@needs_decord
def test_the_last_frames_of_the_avi_are_the_same_on_every_call(media):
    """decord 0.6.0 returned frame 162 of test.avi for its last frame (163) in about 1 fresh
    call in 5 (its seeks find frames by packet pts, which its FFmpeg 4 lacks for this AVI's
    B-frames): such a file is decoded with PyAV. 30 fresh decoders: a 1-in-20 fault would be
    missed with probability 0.95**30 = 0.2, a 1-in-5 one 0.001."""
    path = media / "video" / "test.avi"
    reference = every_frame_in_order(path)
    last = np.arange(len(reference) - 3, len(reference))
    for _ in range(30):
        decoder = VideoDecoder(path, backend="decord")
        assert decoder.num_frames == len(reference)
        np.testing.assert_array_equal(decoder.frames(last[-1:]), reference[last[-1:]])
        np.testing.assert_array_equal(decoder.frames(last), reference[last])


@needs_decord
def test_fractional_fps_maps_seconds_to_the_same_frames(media):
    path = media / "video" / "v_GGSY1Qvo990.mp4"
    ours = VideoDecoder(path, shorter_side=64, backend="pyav")
    theirs = VideoDecoder(path, shorter_side=64, backend="decord")
    assert ours.fps == pytest.approx(981 / 50, rel=1e-6)
    seconds = np.concatenate([np.linspace(-1, ours.duration + 1, 997), np.arange(0, 18, 50 / 981)])
    np.testing.assert_array_equal(ours.indices_at(seconds), theirs.indices_at(seconds))
    inside = seconds[(seconds >= 0) & (seconds < 17.5)]
    np.testing.assert_array_equal(
        ours.indices_at(inside), np.floor(inside * 19.62 + 1e-6).astype(int)
    )


# --------------------------------------------------------------------------- PyAV alone
def test_pyav_only_decodes_from_the_keyframe_before_the_first_wanted_frame(media, monkeypatch):
    """Frames past the last wanted one are not decoded; a later run of frames seeks."""
    decoder = VideoDecoder(media / "video" / "v_ZNVhz7ctTq0.mp4", backend="pyav")
    keys = decoder._stream.key_positions
    assert len(keys) > 2
    seen: list[int] = []
    original = decode._PyAVStream._frames_in_order

    def spy(self, start):
        for index, frame in original(self, start):
            seen.append(index)
            yield index, frame

    monkeypatch.setattr(decode._PyAVStream, "_frames_in_order", spy)
    wanted = np.array([keys[1] + 2, keys[1] + 5, keys[2] + 1])
    decoder.frames(wanted)
    assert min(seen) == keys[1] and max(seen) <= keys[2] + 1 + decode._REORDER_FRAMES
    assert not set(range(keys[1] + 6, keys[2])) & set(seen)  # skipped by seeking


def test_stream_without_timestamps_falls_back_to_index_over_fps(tmp_path):
    """A raw H.264 elementary stream has no pts at all (decord refuses such a file)."""
    import av

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (20, 48, 64, 3), dtype=np.uint8)
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264rgb", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        stream.options = {"crf": "0", "bf": "2"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    decoder = VideoDecoder(path, backend="pyav")
    assert decoder.num_frames == 20 and decoder.fps > 0
    np.testing.assert_allclose(decoder.timestamps, np.arange(20) / decoder.fps)
    np.testing.assert_array_equal(decoder.frames(np.array([17, 3, 19, 3])), frames[[17, 3, 19, 3]])


def test_pyav_conceals_corrupt_packets(tmp_path, media):
    path = tmp_path / "corrupt.mp4"
    shutil.copy(media / "video" / "v_ZNVhz7ctTq0.mp4", path)
    size, rng = os.path.getsize(path), np.random.default_rng(0)
    with open(path, "r+b") as handle:
        for fraction in (0.3, 0.5, 0.7):
            handle.seek(int(size * fraction))
            handle.write(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    clean = VideoDecoder(media / "video" / "v_ZNVhz7ctTq0.mp4", shorter_side=48, backend="pyav")
    damaged = VideoDecoder(path, shorter_side=48, backend="pyav")
    assert damaged.num_frames == clean.num_frames
    indices = np.arange(0, damaged.num_frames, 7)
    frames = damaged.frames(indices)
    difference = np.abs(frames.astype(int) - clean.frames(indices).astype(int)).mean(axis=(1, 2, 3))
    assert frames.shape == (len(indices), 48, 64, 3)
    assert np.mean(difference == 0) > 0.7 and difference.max() < 40


@needs_decord
def test_a_truncated_file_decord_cannot_open_is_decoded_by_pyav(tmp_path, media, caplog):
    """An interrupted download or copy: decord refuses the whole file (``av_read_frame
    failed``), PyAV reads the frames before the cut; the decord decoder hands the file to
    PyAV and gives PyAV's frames (and the frames of the intact file up to the cut)."""
    source = media / "video" / "v_ZNVhz7ctTq0.mp4"
    path = tmp_path / "truncated.mp4"
    path.write_bytes(source.read_bytes()[:300_000])
    decord = pytest.importorskip("decord")
    with pytest.raises(Exception, match="av_read_frame"):
        decord.VideoReader(str(path)).get_frame_timestamp(np.arange(2))
    with caplog.at_level("WARNING"):
        truncated = VideoDecoder(path, shorter_side=48, backend="decord")
    assert isinstance(truncated, DecordVideoDecoder)
    assert "decord cannot read it" in caplog.text
    pyav = VideoDecoder(path, shorter_side=48, backend="pyav")
    whole = VideoDecoder(source, shorter_side=48, backend="decord")
    assert 0 < truncated.num_frames == pyav.num_frames < whole.num_frames
    np.testing.assert_array_equal(truncated.timestamps, pyav.timestamps)
    indices = _indices(truncated.num_frames - 5, 0)  # the last frames before the cut may be torn
    np.testing.assert_array_equal(truncated.frames(indices), pyav.frames(indices))
    np.testing.assert_array_equal(truncated.frames(indices), whole.frames(indices))


def test_without_decord_everything_goes_through_pyav(no_decord, media, tmp_path):
    """decode, flow's video source, the dataset's clips and a whole extraction."""
    from avda.extract import flow, runner, sampling

    path = media / "video" / "v_GGSY1Qvo990.mp4"
    decoder = VideoDecoder(path, shorter_side=64)
    assert isinstance(decoder, PyAVVideoDecoder)
    assert decoder.frames(np.array([5, 0, 5])).shape == (3, 64, 85, 3)
    source = flow._VideoSource(path, 64)
    assert isinstance(source.decoder, PyAVVideoDecoder)
    assert source.read(np.array([1, 2])).shape == (2, 64, 84, 3)  # even sides
    manifest = _real_manifest(media)
    result = runner.extract(
        manifest,
        videos=media / "video",
        out=tmp_path / "nodecord.zarr",
        recipe=tiny("demo", resize_shorter=32, crop_size=32),
        modalities=[runner.ModalitySpec("rgb", "i3d")],
        workers=0,
        chunk_rows=4,
        progress=False,
    )
    assert result.ok
    assert np.all(open_cache(tmp_path / "nodecord.zarr").status("rgb") == Status.DONE)
    assert "decord" not in sys.modules or sys.modules["decord"] is None
    assert sampling  # imported with decord blocked


def test_no_avda_module_imports_decord_at_import_time():
    """Every avda module imports with decord blocked (a fresh interpreter)."""
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['decord'] = None\n"
        "import avda\n"
        "for info in pkgutil.walk_packages(avda.__path__, 'avda.'):\n"
        "    importlib.import_module(info.name)\n"
        "from avda.extract.decode import VideoDecoder, PyAVVideoDecoder\n"
        "assert isinstance(VideoDecoder(sys.argv[1]), PyAVVideoDecoder)\n"
    )
    path = shared_data_dir() / "media" / "video" / "demo.mp4"
    env = {k: v for k, v in os.environ.items() if k != decode.DECODER_ENV}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]


# --------------------------------------------------------------------------- extraction
def _real_manifest(media: Path) -> pd.DataFrame:
    rows = []
    for i, name in enumerate(VIDEOS):
        rows.append(
            {
                "uid": f"s{i}",
                "video_id": Path(name).stem,
                "domain": "d",
                "split": "test",
                "start_sec": 0.5 + 0.3 * i,
                "stop_sec": 4.0 + 0.3 * i,
                "video_path": name,
            }
        )
    return pd.DataFrame(rows)


@needs_decord
def test_avda_extract_with_pyav_gives_decords_features(media, tmp_path, monkeypatch, capsys):
    manifest = _real_manifest(media)
    manifest.to_csv(tmp_path / "m.csv", index=False)
    stores = {}
    for backend in ("decord", "pyav"):
        monkeypatch.setenv(decode.DECODER_ENV, backend)
        stores[backend] = tmp_path / f"{backend}.zarr"
        code = cli.main(
            [
                "extract",
                "--manifest",
                str(tmp_path / "m.csv"),
                "--videos",
                str(media / "video"),
                "-o",
                str(stores[backend]),
                "--backbone",
                "i3d",
                "--modalities",
                "rgb",
                "--recipe",
                "demo",
                "--precision",
                "float32",
                "--workers",
                "0",
                "--quiet",
            ]
        )
        assert code == 0, capsys.readouterr()
    decord_store, pyav_store = open_cache(stores["decord"]), open_cache(stores["pyav"])
    assert np.all(pyav_store.status("rgb") == Status.DONE)
    reference = decord_store.load("rgb")
    assert np.abs(reference).mean() > 0
    # Same pixels in, same function: equal up to float32 kernel rounding.
    np.testing.assert_allclose(pyav_store.load("rgb"), reference, rtol=1e-5, atol=1e-5)


def test_bad_decoder_name_fails_extraction_before_any_work(media, tmp_path, monkeypatch, capsys):
    manifest = _real_manifest(media).iloc[:1]
    manifest.to_csv(tmp_path / "m.csv", index=False)
    monkeypatch.setenv(decode.DECODER_ENV, "ffmpeg-cli")
    code = cli.main(
        [
            "extract",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--videos",
            str(media / "video"),
            "-o",
            str(tmp_path / "x.zarr"),
            "--recipe",
            "demo",
            "--workers",
            "0",
            "--quiet",
        ]
    )
    assert code == 1
    assert "unknown video decoder" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


# Start times on v_GGSY1Qvo990.mp4 (981/50 fps) whose start_sec * fps has a fractional part
# from 0.05 to 0.86: 2.5 and 3.33 fall early in their first frame, 3.0, 3.2 and 3.3 late.
FRACTIONAL_STARTS = (2.5, 3.0, 3.2, 3.3, 3.33)


@pytest.mark.parametrize("recipe", ["mmsada-test", "ta3n", "audio-adaptive"])
def test_frame_number_recipes_read_frame_n_as_the_videos_nth_frame(media, recipe):
    """Recipes that sample frame numbers (EPIC's 1-based ``frame_%010d.jpg``, MM-SADA, TBN,
    mmaction2) read frame n as the n-th frame PyAV decodes from the video (index n - 1), the
    frame a frame folder of that video names n. A segment starting in the second half of its
    first frame read the frame after it: numbers became times at the frames' middles, reckoned
    from start_sec as if it were the frame's start."""
    import av

    from avda.extract import backbones, sampling
    from avda.extract.inputs import InputPaths, SegmentDataset

    name = "v_GGSY1Qvo990.mp4"
    with av.open(str(media / "video" / name)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    fps = 981 / 50
    recipe = tiny(recipe, resize_shorter=240, crop_size=240)  # 320 x 240: native pixels
    segments = pd.DataFrame(
        {
            "uid": [f"s{i}" for i in range(len(FRACTIONAL_STARTS))],
            "video_id": Path(name).stem,
            "start_sec": FRACTIONAL_STARTS,
            "stop_sec": [s + 4.41 for s in FRACTIONAL_STARTS],
            "video_path": name,
        }
    )
    spec = backbones.create("i3d", modality="rgb").input_spec
    dataset = SegmentDataset(
        segments, np.arange(len(segments)), InputPaths(videos=media / "video"), recipe, "rgb",
        spec, None,
    )  # fmt: skip
    for row, start in enumerate(FRACTIONAL_STARTS):
        _, x, status, error = dataset[row]
        assert status == Status.DONE, error
        frames = sampling.SegmentFrames.from_seconds("u", start, start + 4.41, fps)
        numbers = recipe.rgb_numbers(frames)
        expected = decoded[np.clip(numbers - 1, 0, len(decoded) - 1)]
        expected = expected[..., :, 40:280, :]  # the centre 240 x 240 of 320 x 240
        assert x.shape == expected.shape
        wrong = [int(n) for n, a, b in zip(numbers.ravel(), x.reshape(-1, 240, 240, 3),
                                           expected.reshape(-1, 240, 240, 3), strict=True)
                 if not np.array_equal(a.numpy(), b)]  # fmt: skip
        assert not wrong, f"start {start}: frame numbers read as other frames: {wrong[:5]}"


def _write_ms_mkv(path: Path, frames: int, rate: Fraction) -> None:
    """A lossless (FFV1) Matroska video at ``rate`` whose timestamps are whole milliseconds, as
    Matroska and WebM store them; frame i is a flat gray of level 4 i."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        for i in range(frames):
            image = np.full((48, 64, 3), 4 * i, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(i * 1000 / rate), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.mark.parametrize("recipe", ["mmsada-test", "ta3n", "audio-adaptive"])
def test_frame_numbers_read_the_right_frames_of_a_video_with_millisecond_timestamps(
    tmp_path, recipe
):
    """29.97 fps in milliseconds: frame i's timestamp is i * 33.367 ms rounded, up to half a
    millisecond off the grid. Starts on a frame's start (0.0, a frame-number manifest's times),
    early, midway and late (0.33: 89% into its frame) in one: frame n is still the n-th frame
    decoded. (A start within that half millisecond of a frame's end, 0.5 here, is ambiguous:
    the file shows the next frame then.)"""
    from avda.extract import backbones, sampling
    from avda.extract.inputs import InputPaths, SegmentDataset

    rate = Fraction(30000, 1001)
    _write_ms_mkv(tmp_path / "ms.mkv", 60, rate)
    starts = [0.0, 7 / rate, 0.52, 0.25, 0.33]
    segments = pd.DataFrame(
        {
            "uid": [f"s{i}" for i in range(len(starts))], "video_id": "ms",
            "start_sec": [float(s) for s in starts],
            "stop_sec": [float(s) + 1.2 for s in starts], "video_path": "ms.mkv",
        }
    )  # fmt: skip
    recipe = tiny(recipe, resize_shorter=48, crop_size=48)
    spec = backbones.create("i3d", modality="rgb").input_spec
    dataset = SegmentDataset(
        segments, np.arange(len(starts)), InputPaths(videos=tmp_path), recipe, "rgb", spec, None
    )
    for row, start in enumerate(starts):
        _, x, status, error = dataset[row]
        assert status == Status.DONE, error
        frames = sampling.SegmentFrames.from_seconds("u", float(start), float(start) + 1.2, rate)
        numbers = np.clip(recipe.rgb_numbers(frames), 1, 60)
        read = np.rint(x.float().mean(dim=(-3, -2, -1)).numpy() / 4).astype(int) + 1
        wrong = int((read != numbers).sum())
        assert not wrong, f"start {float(start):.4f}: {wrong} of {numbers.size} frames off"


def test_a_store_read_with_the_earlier_frame_timing_is_not_resumed_into_a_mix(
    media, tmp_path, caplog
):
    """Features read from videos by frame number record the frame timing they were read with;
    a store of the earlier timing (a frame late for some segments, no record) is not extended
    with the corrected one: refused in one line while rows remain, a warning when it is done,
    recomputed with --force."""
    from avda.cache import open_cache
    from avda.errors import CacheError
    from avda.extract import runner

    manifest = _real_manifest(media).iloc[:2]
    options = runner.ExtractOptions.of(
        recipe=tiny("mmsada-test"), modalities=["rgb"], videos=media / "video", workers=0,
        device="cpu", progress=False, chunk_rows=1,
    )  # fmt: skip
    out = tmp_path / "c.zarr"
    assert runner.extract(manifest, options, out=out).done == 2
    store = open_cache(out, mode="r+")
    assert store.modality_info("rgb")["frame_times"] == runner.FRAME_TIMES
    store.update_modality_info("rgb", frame_times=None)  # as an earlier avda left it
    with caplog.at_level("WARNING"):
        assert runner.extract(manifest, options, out=out).done == 2  # done: nothing to mix
    assert "read from videos by an avda that read a segment" in caplog.text
    store.status_array("rgb")[1] = int(Status.FAILED)  # left failed: a rerun adds nothing
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert runner.extract(manifest, options, out=out).done == 1
    assert "read from videos by an avda that read a segment" in caplog.text
    with pytest.raises(CacheError, match="resuming would mix the two: --force to recompute rgb"):
        runner.extract(manifest, options.replace(retry_failed=True), out=out)
    # a done row holding NaN: --retry-failed marks it failed and recomputes it, so it is refused
    # too (it recomputed the row with the corrected timing, into a mix)
    store.status_array("rgb")[1] = int(Status.DONE)
    row = store.features("rgb")[1]
    store.features("rgb")[1] = np.full(row.shape, np.nan, dtype=row.dtype)
    with pytest.raises(CacheError, match="resuming would mix the two: --force to recompute rgb"):
        runner.extract(manifest, options.replace(retry_failed=True), out=out)
    assert open_cache(out).status("rgb").tolist() == [Status.DONE] * 2  # nothing marked
    store.status_array("rgb")[1] = int(Status.PENDING)
    with pytest.raises(CacheError, match="resuming would mix the two: --force to recompute rgb"):
        runner.extract(manifest, options, out=out)
    result = runner.extract(manifest, options.replace(force=True), out=out)
    assert result.done == 2
    assert open_cache(out).modality_info("rgb")["frame_times"] == runner.FRAME_TIMES
    # time-based recipes (demo's centres) do not read frame numbers: nothing recorded
    demo = options.replace(recipe=tiny("demo"), force=False)
    runner.extract(manifest, demo, out=tmp_path / "demo.zarr")
    assert "frame_times" not in open_cache(tmp_path / "demo.zarr").modality_info("rgb")


@needs_decord
def test_a_damaged_avi_says_what_was_lost_in_avdas_lines_only(tmp_path, media, capfd, caplog):
    # A new user's copy of test.avi with bytes overwritten: decord's FFmpeg printed ~30 lines
    # of its own to stderr ("[mpeg4 @ 0x...] ac-tex damaged at 5 7", twice) and its warnings
    # carried decord's build paths ("[13:48:26] /github/workspace/src/video/...cc:486: ")
    data = bytearray((media / "video" / "test.avi").read_bytes())
    rng = np.random.default_rng(0)
    for offset in range(100_000, 150_000, 997):
        data[offset] = int(rng.integers(0, 256))
    path = tmp_path / "damaged.avi"
    path.write_bytes(bytes(data))
    caplog.set_level("INFO", logger="avda.extract.decode")
    decoder = DecordVideoDecoder(path, shorter_side=64)
    frames = decoder.frames(np.arange(decoder.num_frames))
    assert frames.shape[0] == decoder.num_frames
    assert "undecodable; using frame" in caplog.text  # avda's own account of the damage
    err = capfd.readouterr().err
    assert "@ 0x" not in err and "damaged at" not in err, err[:500]
    assert "/github/workspace" not in caplog.text and ".cc:" not in caplog.text
