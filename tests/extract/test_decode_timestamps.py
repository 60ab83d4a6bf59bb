"""decord's frame timestamps checked for plausibility (decode.timestamps_problem): a Matroska
video stream without a start time, as PyAV writes one, gets about 9.2e15 s for every frame from
decord, which read every clip time as frame 0 until 2026-12-07; sane files keep decord's own
timestamps; and a store extracted before the check is not resumed into a mix.

Facts measured 2026-12-07 with decord 0.6.0 (its own FFmpeg 4), PyAV 18.1 (FFmpeg 7) and the
ffmpeg 9.0.2 command line (imageio-ffmpeg) on ``write_video(..., codec="libx264rgb")`` .mkv
files: PyAV and ffmpeg both report no start time for the video stream (ffmpeg prints no
``start:``, also after ``ffmpeg -c copy`` into another .mkv); packet pts 0, 100, 200... in
1/1000 s; decord gives (pts + 2**63) / 1000 = 9.223372e15 s as float32 for every frame. The
shared videos (4 mp4, test.avi), and .mp4 / .webm / .ts / libx264 .mkv / mpeg4 .avi files
written by PyAV or remuxed by ffmpeg, have a start time and timestamps decord gets right
(B-frames of MPEG-4 in AVI aside, test.avi's and those PyAV writes: -3.7e17 s, and wrong frames
found by them: such files are PyAV's whole).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import shared_data_dir
from tests.extract.conftest import every_frame_in_order, tiny

from avda.cache import Status, open_cache
from avda.data_manifests.demo import write_video
from avda.errors import CacheError
from avda.extract import decode, runner
from avda.extract.decode import VideoDecoder, decord_misplaced_frames, timestamps_problem

needs_decord = pytest.mark.skipif(not decode.decord_available(), reason="decord not installed")
VIDEOS = sorted(p.name for p in (shared_data_dir() / "media" / "video").glob("*.*"))
FPS = 10
LOSSLESS = {"codec": "libx264rgb", "crf": 0}


def _frames(count: int, size: tuple[int, int] = (48, 32)) -> np.ndarray:
    """Frame i is uniformly grey 8 * i + 4 (told apart after any resize)."""
    width, height = size
    values = (8 * np.arange(count) + 4).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (count, height, width, 3)).copy()


def _write_b_frames(
    path: Path, frames: np.ndarray, codec: str = "mpeg4", options: dict | None = None
) -> None:
    """MPEG-4 part 2 (or ``codec``) with B-frames (as UCF/HMDB's xvid files). In AVI decord's
    FFmpeg 4 gives every frame -3.7e17 s, and returned other frames for the last ones on every
    call (40 of 40 on a 40-frame file, measured 2026-12-07); in MP4, MOV and Matroska its
    timestamps are valid and its frames wrong at most random positions all the same
    (docs/extraction.md)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec in ("mpeg4", "mpeg1video", "mpeg2video"):
            stream.codec_context.max_b_frames = 2
        stream.codec_context.gop_size = 12
        stream.codec_context.options = options or {}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Lossless files written by avda's own helper: the .mkv has no video start time."""
    root = tmp_path_factory.mktemp("written")
    frames = _frames(30)
    # FFmpeg (4 in decord, 7 in PyAV) finds no start time in H.264 Matroska this short
    write_video(root / "nostart.mkv", frames[:6], fps=FPS, codec="libx264rgb", crf=0)
    write_video(root / "fine.mp4", frames, fps=FPS, codec="libx264rgb", crf=0)
    write_video(root / "fine.avi", frames, fps=FPS, codec="mpeg4")
    # 64 px wide: decord's FFmpeg 4 fails on these 48 px frames (a size check), so avda's
    # PyAV fallback would hide its wrong frames
    wide = _frames(30, (64, 48))
    for ext in ("avi", "mp4", "mkv", "mov"):
        _write_b_frames(root / f"bframes.{ext}", wide)
    _write_b_frames(root / "mpeg2.mp4", wide, codec="mpeg2video")
    _write_b_frames(root / "h264.mpg", wide, "libx264")  # MPEG-PS: decord's times at -1e14 s
    _write_b_frames(root / "mpeg1.mkv", wide, "mpeg1video", {"strict": "-2"})  # 10 fps
    # x264 with B-frames, open and closed GOP; x265's default is an open GOP
    for gop in ("open", "closed"):
        flag = {"x264-params": f"open-gop={int(gop == 'open')}"}
        _write_b_frames(root / f"h264_{gop}.mp4", wide, "libx264", flag)
        flag = {"x265-params": f"open-gop={int(gop == 'open')}:log-level=error"}
        _write_b_frames(root / f"hevc_{gop}.mkv", wide, "libx265", flag)
    # with AAC audio (1024 priming samples, first audio packet at -1024 / rate s): decord's
    # FFmpeg 4 starts the short stream there, the longer one has a video start of its own
    for rate in (16000, 44100):
        audio = 0.3 * np.sin(np.arange(6 * rate // FPS) * 0.05)
        write_video(root / f"late{rate}.mkv", frames[:6], FPS, audio, rate, **LOSSLESS)
    audio = 0.3 * np.sin(np.arange(3 * 16000) * 0.05)
    write_video(root / "fine_aac.mkv", frames, FPS, audio, 16000, **LOSSLESS)
    write_video(root / "fine_aac.mp4", frames[:6], FPS, audio[:9600], 16000, **LOSSLESS)
    return root


def _grey(frames: np.ndarray) -> np.ndarray:
    """The frame number each decoded frame shows (see _frames)."""
    return np.rint((frames.reshape(len(frames), -1).mean(axis=1) - 4) / 8).astype(int)


# --------------------------------------------------------------------------- the check itself
def test_timestamps_problem_names_implausible_times_only():
    sane = np.arange(30) / FPS
    assert timestamps_problem(sane, FPS, 3.0) is None
    assert timestamps_problem(sane + 0.04, FPS, 3.0) is None  # first frame late, as test.avi
    assert timestamps_problem(sane, FPS, None) is None  # no header duration: len / fps
    assert timestamps_problem(sane, 0.0, None) is None  # nor a rate: nothing to compare
    assert timestamps_problem(sane[:0], FPS, 3.0) is None
    nostart = np.full(30, np.float32(2**63 / 1000), dtype=np.float32)  # decord on nostart.mkv
    assert "9.22e+15 s in a 3 s stream" in timestamps_problem(nostart, FPS, 3.0)
    assert "9.22e+15" in timestamps_problem(nostart, FPS, None)
    assert timestamps_problem(np.r_[-3.7e17, sane[1:]], FPS, 3.0).startswith("frames at -3.7e+17")
    assert timestamps_problem(np.r_[sane[:3], np.nan], FPS, 3.0) == "not finite"
    assert timestamps_problem(sane[::-1], FPS, 3.0) == "not in display order"
    assert timestamps_problem(sane + 0.15, FPS, 3.0) is None  # last starts past the end, < a frame
    assert timestamps_problem(sane + 0.25, FPS, 3.0) is not None  # by more than a frame


# --------------------------------------------------------------------------- against PyAV
@needs_decord
def test_decord_reads_a_matroska_stream_without_start_time_as_pyav_does(written):
    decord = pytest.importorskip("decord")
    path = written / "nostart.mkv"
    assert not decode.probe(path).has_start_time and decord_misplaced_frames(path)
    raw = decord.VideoReader(str(path)).get_frame_timestamp(np.arange(6))[:, 0]
    np.testing.assert_allclose(raw, 2**63 / 1000, rtol=1e-6)  # the fact behind the bug
    ours, pyav = VideoDecoder(path, backend="decord"), VideoDecoder(path, backend="pyav")
    assert ours.backend == "pyav"  # the file is PyAV's whole
    np.testing.assert_allclose(ours.timestamps, np.arange(6) / FPS, atol=1e-9)
    np.testing.assert_array_equal(ours.timestamps, pyav.timestamps)
    times = np.array([0.05, 0.15, 0.25, 0.41, 0.59])
    np.testing.assert_array_equal(ours.indices_at(times), [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(pyav.indices_at(times), [0, 1, 2, 4, 5])
    assert ours.duration == pytest.approx(0.6)
    np.testing.assert_array_equal(_grey(ours.frames(ours.indices_at(times))), [0, 1, 2, 4, 5])


@needs_decord
@pytest.mark.parametrize(("rate", "late"), [(16000, 0.064), (44100, 0.023)])
def test_decord_reads_a_short_matroska_stream_with_aac_as_pyav_does(written, rate, late):
    """decord put every frame ``late`` s (1024 samples at ``rate``) after PyAV and ffmpeg,
    plausible times that the plausibility check passes: [0 0 1] read for [0 1 2]."""
    decord = pytest.importorskip("decord")
    path = written / f"late{rate}.mkv"
    assert decode.probe(path).has_start_time  # not the 9.2e15 s case
    raw = decord.VideoReader(str(path)).get_frame_timestamp(np.arange(6))[:, 0]
    np.testing.assert_allclose(raw, late + np.arange(6) / FPS, atol=1e-6)  # the fact
    assert timestamps_problem(raw, FPS, decode.probe(path).duration) is None
    assert decode.first_frame_times(path) == decode.FirstFrameTimes(0.0, pytest.approx(late))
    assert decord_misplaced_frames(path)
    ours, pyav = VideoDecoder(path, backend="decord"), VideoDecoder(path, backend="pyav")
    assert ours.backend == "decord"
    np.testing.assert_array_equal(ours.timestamps, pyav.timestamps)
    times = np.array([0.05, 0.15, 0.25, 0.41, 0.59])
    np.testing.assert_array_equal(pyav.indices_at(times), [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(ours.indices_at(times), [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(_grey(ours.frames(ours.indices_at(times))), [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(_grey(pyav.frames(pyav.indices_at(times))), [0, 1, 2, 4, 5])


@needs_decord
@pytest.mark.parametrize("name", ["bframes.avi", "nostart.mkv"])
def test_a_file_with_invalid_decord_timestamps_is_decoded_by_pyav_whole(written, name, caplog):
    """The decision, not only test.avi's seldom wrong last frame: a file whose decord
    timestamps are invalid (B-frames without pts; no stream start time) has PyAV's frame
    count, timestamps and frames, whatever order they are asked in."""
    path = written / name
    decord = pytest.importorskip("decord")
    raw = decord.VideoReader(str(path)).get_frame_timestamp(np.arange(2))[:, 0]
    assert timestamps_problem(raw, FPS, decode.probe(path).duration) is not None  # the fact
    reference = every_frame_in_order(path)
    with caplog.at_level(logging.INFO, logger="avda.extract.decode"):
        ours = VideoDecoder(path, backend="decord")
    assert f"PyAV decodes its {len(reference)} frames" in caplog.text
    pyav = VideoDecoder(path, backend="pyav")
    assert ours.num_frames == pyav.num_frames == len(reference)
    np.testing.assert_array_equal(ours.timestamps, pyav.timestamps)
    last = np.arange(len(reference) - 3, len(reference))
    for indices in (last[-1:], last, np.arange(len(reference))[::-1]):
        np.testing.assert_array_equal(ours.frames(indices), reference[indices])


@needs_decord
@pytest.mark.parametrize(
    "name",
    [
        *("bframes.mp4", "bframes.mkv", "bframes.mov", "mpeg2.mp4", "mpeg1.mkv"),
        *("h264_open.mp4", "hevc_open.mkv"),
    ],
)
def test_b_frames_decord_gets_wrong_are_decoded_by_pyav_whole(written, name, caplog):
    """MPEG-4 Part 2 / MPEG-2 with B-frames, open-GOP H.264 / HEVC: decord's timestamps are
    valid, yet a fresh reader returned another frame for many single frames asked (MPEG-4: 20
    of 20 in MP4 and MOV, 12 of 20 in Matroska; open-GOP H.264 9-10 of 20, HEVC 2 of 20,
    measured 2026-12-07); the header (and first packets) decide, PyAV decodes the file whole."""
    decord = pytest.importorskip("decord")
    path = written / name
    raw = decord.VideoReader(str(path)).get_frame_timestamp(np.arange(30))[:, 0]
    assert timestamps_problem(raw, FPS, decode.probe(path).duration) is None  # looks valid
    assert decode.probe(path).b_frames and decord_misplaced_frames(path)
    reference = every_frame_in_order(path)
    with caplog.at_level(logging.INFO, logger="avda.extract.decode"):
        assert VideoDecoder(path, backend="decord").backend == "pyav"
    assert "decord returns wrong frames of" in caplog.text
    assert "PyAV decodes its 30 frames" in caplog.text
    for index in range(1, len(reference), 3):  # a fresh decoder per frame, as decord failed
        ours = VideoDecoder(path, backend="decord")
        np.testing.assert_array_equal(ours.frames(np.array([index])), reference[[index]])


def test_the_open_gop_scan_reads_h264_and_hevc_with_b_frames_only(written, media, monkeypatch):
    """The scan reads up to 600 packets (30-160 ms of a 1080p60 file): not of a stream without
    B-frames (no frame is shown before a keyframe) nor of another codec."""
    scanned: list[str] = []
    monkeypatch.setattr(decode, "open_gop", lambda path: scanned.append(Path(path).name))
    for path in (media / "video" / "bigbuckbunny.mp4", written / "fine.avi", written / "fine.mp4"):
        assert decode.decord_wrong_frames(decode.probe(path)) is None
    assert decode.decord_wrong_frames(decode.probe(written / "h264_closed.mp4")) is None
    assert scanned == ["h264_closed.mp4"]


@needs_decord
@pytest.mark.parametrize("name", ["h264_closed.mp4", "hevc_closed.mkv"])
def test_closed_gop_b_frames_keep_decord_and_its_frames_are_right(written, name):
    path = written / name
    assert decode.probe(path).b_frames and not decode.open_gop(path)
    assert not decord_misplaced_frames(path)
    reference = every_frame_in_order(path)
    for index in range(1, len(reference), 3):
        ours = VideoDecoder(path, backend="decord")
        assert ours.backend == "decord"
        np.testing.assert_array_equal(ours.frames(np.array([index])), reference[[index]])


def test_the_resume_check_reads_decords_index_outside_mp4_and_matroska(written, monkeypatch):
    """decord's index is a demux of the whole file (28 ms of a 5 s 720p mp4, seconds of a long
    one): not read for MP4 / Matroska, whose decord timestamps were valid; read for AVI and
    MPEG-PS, whose reordered packets decord's FFmpeg 4 leaves without pts."""
    opened: list[str] = []

    def index(path, info):
        opened.append(Path(path).name)
        return "invalid" if Path(path).suffix in (".avi", ".mpg") else None

    monkeypatch.setattr(decode, "_decord_timestamps_problem", index)
    monkeypatch.setattr(decode, "decord_available", lambda: True)
    names = ["fine.mp4", "fine_aac.mkv", "fine_aac.mp4", "bframes.mp4", "fine.avi", "h264.mpg"]
    assert [decord_misplaced_frames(written / name) for name in names] == [0, 0, 0, 1, 1, 1]
    assert opened == ["fine.avi", "h264.mpg"]  # bframes.mp4: its header decides


@needs_decord
def test_h264_b_frames_in_mpeg_ps_are_pyavs_and_found_on_resume(written):
    """decord's FFmpeg 4 puts H.264 B-frames in MPEG-PS at about -1e14 s: PyAV decodes the
    file whole, and a store an older avda read with decord's frames is not resumed into a mix
    (the resume check read decord's index of AVI files only)."""
    path = written / "h264.mpg"
    assert decode.probe(path).container == "mpeg" and decode.probe(path).b_frames
    assert VideoDecoder(path, backend="decord").backend == "pyav"
    assert decord_misplaced_frames(path)


@needs_decord
@pytest.mark.parametrize("name", ["fine.mp4", "fine.avi", "fine_aac.mkv", "fine_aac.mp4"])
def test_written_files_with_a_start_time_keep_decords_timestamps(written, name):
    path = written / name
    assert decode.probe(path).has_start_time and not decord_misplaced_frames(path)
    ours, pyav = VideoDecoder(path, backend="decord"), VideoDecoder(path, backend="pyav")
    assert ours._pyav is None  # not repaired: PyAV never opened
    times = np.arange(0, pyav.duration, 0.037)
    np.testing.assert_array_equal(ours.indices_at(times), pyav.indices_at(times))
    np.testing.assert_array_equal(ours.indices_at(times), np.floor(times * FPS + 1e-6))


@needs_decord
@pytest.mark.parametrize("name", VIDEOS)
def test_real_videos_are_not_repaired_beyond_what_was(media, name, caplog):
    """Only test.avi (MPEG-4 B-frames) is PyAV's; the H.264 files (some with B-frames) keep
    decord and its frames are PyAV's."""
    path = media / "video" / name
    with caplog.at_level(logging.INFO, logger="avda.extract.decode"):
        ours = VideoDecoder(path, shorter_side=32, backend="decord")
    pyav = VideoDecoder(path, shorter_side=32, backend="pyav")
    repaired = "PyAV decodes its" in caplog.text
    assert repaired == (name == "test.avi"), caplog.text
    assert ours.backend == ("pyav" if name == "test.avi" else "decord")
    # its store made by an older avda (decord's frames) is not resumed into a mix
    assert decord_misplaced_frames(path) == (name == "test.avi")
    first = decode.first_frame_times(path)
    assert first.decord == first.pyav == pytest.approx(pyav.timestamps[0])
    times = np.arange(0, pyav.duration, 0.037)
    np.testing.assert_array_equal(ours.indices_at(times), pyav.indices_at(times))


# --------------------------------------------------------------------------- stores
def _manifest(*names: str) -> pd.DataFrame:
    rows = [
        {
            "uid": f"{name.replace('.', '_')}_{i}",
            "video_id": name.replace(".", "_"),
            "domain": "d",
            "split": "test",
            "start_sec": 0.3 * i,
            "stop_sec": 0.3 + 0.3 * i,
            "video_path": name,
        }
        for name in names
        for i in range(2)
    ]
    return pd.DataFrame(rows)


def _options(written: Path) -> runner.ExtractOptions:
    return runner.ExtractOptions.of(
        recipe=tiny("demo", resize_shorter=32, crop_size=32), modalities=["rgb"], videos=written,
        workers=0, device="cpu", progress=False, chunk_rows=1,
    )  # fmt: skip


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "misplaced", ["nostart.mkv", "late16000.mkv", "bframes.avi", "bframes.mp4"]
)
def test_a_store_read_before_the_check_is_not_resumed_into_a_mix(
    written, tmp_path, caplog, misplaced
):
    """A store without ``video_timestamps`` (an avda before 2026-12-07) whose done segments
    include a video decord misplaced (no stream start time; every frame late; B-frames without
    pts, whose decord frames were wrong; MPEG-4 B-frames in MP4, valid timestamps and wrong
    frames): a warning when
    it is complete, refused in one line while rows remain, recomputed with --force; the
    convention is recorded."""
    manifest = _manifest(misplaced, "fine.mp4")
    options = _options(written)
    out = tmp_path / "c.zarr"
    assert runner.extract(manifest, options, out=out).done == 4
    store = open_cache(out, mode="r+")
    assert store.modality_info("rgb")["video_timestamps"] == runner.VIDEO_TIMESTAMPS
    # as an earlier avda left it: none, decord's frames of B-frames without pts kept, or
    # decord's frames of MPEG-4 B-frames with valid timestamps kept
    earlier = {"bframes.avi": "checked-2026-12-07", "bframes.mp4": "checked-2026-12-07-pyav-frames"}
    earlier = earlier.get(misplaced)
    store.update_modality_info("rgb", video_timestamps=earlier)
    with caplog.at_level("WARNING"):
        assert runner.extract(manifest, options, out=out).done == 4  # done: nothing to mix
    assert "1 video(s) whose frames" in caplog.text and f"({misplaced}: " in caplog.text
    assert open_cache(out).modality_info("rgb").get("video_timestamps") == earlier
    store.status_array("rgb")[3] = int(Status.FAILED)  # left failed: a rerun adds nothing
    assert runner.extract(manifest, options, out=out).done == 3
    with pytest.raises(CacheError, match="--force to recompute rgb"):
        runner.extract(manifest, options.replace(retry_failed=True), out=out)
    store.status_array("rgb")[3] = int(Status.PENDING)  # a fine.mp4 row left to do
    with pytest.raises(CacheError, match="--force to recompute rgb") as info:
        runner.extract(manifest, options, out=out)
    assert misplaced in str(info.value) and "\n" not in str(info.value)
    if misplaced == "bframes.mp4":  # its reason is named
        assert "MPEG-4 / MPEG-1/2 with B-frames" in str(info.value)
    result = runner.extract(manifest, options.replace(force=True), out=out)
    assert result.done == 4
    assert open_cache(out).modality_info("rgb")["video_timestamps"] == runner.VIDEO_TIMESTAMPS
    # the two segments are read at their own times
    features = open_cache(out).load("rgb")
    assert not np.allclose(features[0], features[1])


@pytest.mark.usefixtures("one_thread")
def test_a_store_whose_avda_read_b_frames_in_avi_with_pyav_resumes(written, tmp_path, caplog):
    """A store recording ``checked-2026-12-07-pyav-frames`` read an MPEG-4 AVI with B-frames
    (invalid decord timestamps: UCF/HMDB's xvid files) with PyAV whole, as avda does now: it
    resumes, where a refusal would make the whole dataset be extracted again for nothing."""
    manifest = _manifest("bframes.avi", "fine.mp4")
    options = _options(written)
    out = tmp_path / "c.zarr"
    assert runner.extract(manifest, options, out=out).done == 4
    store = open_cache(out, mode="r+")
    before = np.asarray(store.load("rgb"))
    store.update_modality_info("rgb", video_timestamps="checked-2026-12-07-pyav-frames")
    store.status_array("rgb")[3] = int(Status.PENDING)
    with caplog.at_level("WARNING"):
        assert runner.extract(manifest, options, out=out).done == 4
    assert "whose frames" not in caplog.text
    assert open_cache(out).modality_info("rgb")["video_timestamps"] == runner.VIDEO_TIMESTAMPS
    np.testing.assert_array_equal(np.asarray(open_cache(out).load("rgb")), before)
    assert decord_misplaced_frames(written / "bframes.avi")  # an older store: refused


@pytest.mark.usefixtures("one_thread")
def test_a_store_of_videos_with_start_times_resumes_unchanged(written, tmp_path):
    manifest = _manifest("fine.mp4", "fine.avi", "fine_aac.mkv")
    options = _options(written)
    out = tmp_path / "c.zarr"
    assert runner.extract(manifest, options, out=out).done == 6
    store = open_cache(out, mode="r+")
    before = np.asarray(store.load("rgb"))
    store.update_modality_info("rgb", video_timestamps=None)  # as an earlier avda left it
    store.status_array("rgb")[3] = int(Status.PENDING)
    assert runner.extract(manifest, options, out=out).done == 6
    after = open_cache(out)
    assert after.modality_info("rgb")["video_timestamps"] == runner.VIDEO_TIMESTAMPS
    np.testing.assert_allclose(np.asarray(after.load("rgb")), before, atol=1e-5)
