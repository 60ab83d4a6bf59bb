"""Which decoded frame a frame number means, against ffmpeg's own frame extraction.

``data/ffmpeg_frames.json`` (made by ``make_ffmpeg_frames_reference.py``; ffmpeg is not needed
here) records, for each shared video, which PyAV-decoded frame ffmpeg writes as file n. On
``test.avi`` the first frame is at 0.04 s of a stream starting at 0: ffmpeg's default
extraction (constant rate, as EPIC's ``-r 60``) writes that frame twice (files 1 and 2), so
file n is the frame shown at (n - 1) / 25 s. ``avda extract --videos`` reads frame n at that
time; ``avda flow --videos`` numbered decoded frames instead (file n = decoded frame n - 1,
ffmpeg's ``-fps_mode passthrough``), one frame ahead of both on such files.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from avda.extract import flow
from avda.extract.decode import VideoDecoder, decord_available
from avda.extract.sampling import SegmentFrames

FACTS = json.loads((Path(__file__).parent / "data" / "ffmpeg_frames.json").read_text())
VIDEOS = [name for name in FACTS["videos"] if name.endswith((".avi", ".mp4"))]
BACKENDS = ["pyav", *(["decord"] if decord_available() else [])]


def test_the_recorded_facts():
    late = FACTS["videos"]["test.avi"]
    assert (late["first_pts"], late["stream_start"], late["streams"]) == (0.04, 0.0, 2)
    assert (late["decoded"], late["default"]["count"], late["passthrough"]["count"]) == (
        164,
        165,
        164,
    )
    assert late["q2"]["count"] == late["epic"]["count"] == late["rate"]["count"] == 165
    # the same video without its audio track: ffmpeg's automatic mode keeps every frame once
    alone = FACTS["videos"]["test.avi (video stream only, -an -c copy)"]
    assert alone["default"]["count"] == 164 and alone["default"]["files"]["2"] == 1
    for name in VIDEOS[1:]:  # the others start at 0: every mode numbers decoded frames
        facts = FACTS["videos"][name]
        assert facts["first_pts"] == 0.0
        assert all(int(n) - 1 == k for n, k in facts["default"]["files"].items())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", VIDEOS)
def test_video_rgb_reads_the_frame_ffmpeg_writes_as_that_number(media, name, backend):
    facts = FACTS["videos"][name]
    decoder = VideoDecoder(media / "video" / name, shorter_side=64, backend=backend)
    for number, decoded in facts["default"]["files"].items():
        n = int(number)
        # a segment starting at frame n's start, and one starting late in it
        for start in ((n - 1) / facts["fps"], (n - 0.3) / facts["fps"]):
            segment = SegmentFrames.from_seconds("s", start, start + 1.0, facts["fps"])
            assert segment.start_frame == n
            index = decoder.indices_at(segment.time_of(np.array([n])))
            assert index.tolist() == [decoded], (name, n, start)


@pytest.mark.parametrize("name", ["test.avi", "demo.mp4"])
def test_flow_from_a_video_numbers_frames_as_ffmpeg_and_extract(media, name, monkeypatch):
    facts = FACTS["videos"][name]
    source = flow._VideoSource(media / "video" / name, 64)
    assert source.count == facts["default"]["count"]
    # which decoded frames it reads (not their pixels)
    monkeypatch.setattr(source.decoder, "frames", lambda indices: np.asarray(indices))
    numbers = np.array([int(n) for n in facts["default"]["files"]])
    assert source.read(numbers).tolist() == list(facts["default"]["files"].values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_names_the_decoder_that_read_a_late_first_frame(
    tmp_path, backend, caplog, monkeypatch
):
    """6 frames from 3 s (MPEG-4 B-frames in AVI: PyAV's whole under decord too): the warning
    names PyAV, whose timestamps these are, and no decoder switch that would change nothing."""
    import av

    path = tmp_path / "late.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.max_b_frames = 2
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), "rgb24")
            frame.pts, frame.time_base = 30 + i, Fraction(1, 10)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    monkeypatch.setenv("AVDA_VIDEO_DECODER", backend)
    with caplog.at_level("WARNING", logger="avda.extract.flow"):
        source = flow._VideoSource(path, 48)
    assert source.decoder.timestamps[0] == pytest.approx(3.0) and source.count == 6
    assert "first frame is at 3 s (pyav's timestamps), past the video's end (6 frames" in (
        caplog.text
    )
    assert "AVDA_VIDEO_DECODER" not in caplog.text


def test_first_frame_repeats():
    assert flow.first_frame_repeats(0.04, 25.0, 164) == 1  # test.avi
    assert flow.first_frame_repeats(0.0, 25.0, 164) == 0
    # the frame shown at the middle of number n, (n - 0.5) / fps, as avda extract reads it
    assert [flow.first_frame_repeats(t / 25, 25.0, 100) for t in (0.25, 0.5, 0.75, 1.5, 1.6)] == [
        0,
        0,
        1,
        1,
        2,
    ]
    # decord's timestamps of a Matroska stream without a start time: not a time
    assert flow.first_frame_repeats(9.2e15, 10.0, 3) == 0


def _zero_flow(options, device):
    return lambda first, second: np.zeros((*first.shape[:3], 2), np.float32)


def _test_and_demo(**columns):
    """A segment of test.avi (first frame at 0.04 s) and one of demo.mp4 (at 0), to 1 s."""
    import pandas as pd

    return pd.DataFrame(
        {
            "uid": ["a", "b"],
            "video_id": ["test", "demo"],
            "video_path": ["test.avi", "demo.mp4"],
            "stop_sec": [1.0, 1.0],
            **columns,
        }
    )


def test_a_flow_folder_numbered_the_old_way_is_not_resumed(media, tmp_path, monkeypatch):
    """Flow folders that ``avda flow --videos`` wrote before first_frame_repeats existed
    numbered decoded frames: resuming one of a video whose first frame starts late would mix
    the two numberings, and is refused (``--force`` recomputes it); one of a video starting at
    0 is numbered the same either way and resumes."""

    monkeypatch.setattr(flow, "_estimator", _zero_flow)
    manifest = _test_and_demo(start_sec=[0.0, 0.0])
    out = tmp_path / "flow"
    options = flow.FlowOptions(shorter_side=32)
    run = dict(out=out, videos=media / "video", options=options, segments_only=True,
               margin=0.0, progress=False)  # fmt: skip
    result = flow.compute_flow(manifest, **run)
    assert result.ok, result.failures
    for video_id, repeats, frames in (("test", 1, 164), ("demo", 0, 279)):
        info = json.loads((out / video_id / "flow.json").read_text())
        assert (info["first_frame_repeats"], info["frames"]) == (repeats, frames)
        # as an avda before it wrote them
        del info["first_frame_repeats"]
        (out / video_id / "flow.json").write_text(json.dumps(info))
    again = flow.compute_flow(manifest, **run)
    assert [video for video, _ in again.failures] == ["test"]
    said = again.failures[0][1]  # not a bare 'has 0': its flow.json has no such key
    assert "first_frame_repeats: folder has 0 (no key: made before 2026-12-07" in said
    assert "ahead of avda's RGB on this video by 1 frame(s)), this run asks for 1" in said
    forced = flow.compute_flow(manifest, **run, force=True)
    assert (
        forced.ok
        and json.loads((out / "test" / "flow.json").read_text())["first_frame_repeats"] == 1
    )


def test_extract_refuses_an_old_flow_folder_of_a_video_starting_late(media, tmp_path, monkeypatch):
    """``avda extract --flow`` of a folder an earlier ``avda flow`` wrote (flow.json without
    first_frame_repeats) from a video whose first frame starts late: its flow is a frame ahead
    of the RGB, so its segments fail naming the fix, where the video is at hand (--videos);
    the folder of a video starting at 0, numbered the same either way, and folders written
    now are read."""
    from tests.extract.conftest import tiny

    from avda.cache import Status, open_cache
    from avda.extract import runner

    monkeypatch.setattr(flow, "_estimator", _zero_flow)
    manifest = _test_and_demo(start_sec=[0.2, 0.2], domain=["d", "d"], split=["train", "train"])
    out = tmp_path / "flow"
    made = flow.compute_flow(
        manifest, out=out, videos=media / "video", options=flow.FlowOptions(shorter_side=32),
        progress=False,
    )  # fmt: skip
    assert made.ok, made.failures
    extract = dict(
        flow=out, videos=media / "video", recipe=tiny("demo", resize_shorter=32, crop_size=32),
        modalities=[runner.ModalitySpec("flow", "i3d")], workers=0, progress=False,
    )  # fmt: skip
    runner.extract(manifest, out=tmp_path / "now.zarr", **extract)
    assert open_cache(tmp_path / "now.zarr").status("flow").tolist() == [Status.DONE] * 2
    for video_id in ("test", "demo"):  # as an avda before 2026-12-07 wrote them
        info = json.loads((out / video_id / "flow.json").read_text())
        del info["first_frame_repeats"]
        (out / video_id / "flow.json").write_text(json.dumps(info))
    # of a folder ffmpeg's default extraction wrote (165 files of test.avi, as extract numbers
    # them): its 164 flow frames are numbered as the RGB, and read
    runner.extract(manifest, out=tmp_path / "frames.zarr", **extract)
    assert open_cache(tmp_path / "frames.zarr").status("flow").tolist() == [Status.DONE] * 2
    info = json.loads((out / "test" / "flow.json").read_text())
    assert info["frames"] == 164
    info["frames"] = 163  # from the video: its 164 decoded frames, numbered from 1
    (out / "test" / "flow.json").write_text(json.dumps(info))
    runner.extract(manifest, out=tmp_path / "old.zarr", **extract)
    store = open_cache(tmp_path / "old.zarr")
    assert store.status("flow").tolist() == [Status.FAILED, Status.DONE]
    error = store.errors("flow")[0]
    assert "numbered the decoded frames of test.avi" in error
    assert "1 frame(s) ahead of the RGB; recompute it (avda flow --force)" in error
    del info["frames"]  # older still: no count, so no telling: refused
    (out / "test" / "flow.json").write_text(json.dumps(info))
    runner.extract(manifest, out=tmp_path / "older.zarr", **extract)
    assert open_cache(tmp_path / "older.zarr").status("flow").tolist()[0] == Status.FAILED


def _cut_without_reencoding(source: Path, out: Path, frames: int) -> None:
    """``source``'s video packets with every pts ``frames`` frames earlier: an MP4 whose first
    frames lie before its stream's start (the edit list of a file cut with ``-c copy``)."""
    import av

    with av.open(str(source)) as inp, av.open(str(out), "w") as dst:
        stream = inp.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        shift = None
        for packet in inp.demux(stream):
            if not packet.size:
                continue
            shift = shift if shift is not None else frames * int(packet.duration)
            moved = av.Packet(bytes(packet))
            moved.pts, moved.dts = packet.pts - shift, packet.dts - shift
            moved.duration, moved.is_keyframe = packet.duration, packet.is_keyframe
            moved.time_base, moved.stream = packet.time_base, copy
            dst.mux(moved)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_skips_frames_shown_before_the_stream_start(media, tmp_path, monkeypatch, backend):
    """Frames an MP4's edit list puts before the stream's start (negative timestamps: no
    player shows them, and ``avda extract --videos`` never reads them) are not numbered: flow
    frame n is still the frame extract reads as n (flow numbered them 1 and 2, two frames
    behind extract on such a file)."""
    path = tmp_path / "cut.mp4"
    _cut_without_reencoding(media / "video" / "demo.mp4", path, frames=2)
    monkeypatch.setenv("AVDA_VIDEO_DECODER", backend)
    source = flow._VideoSource(path, 64)
    assert source.decoder.backend == backend and source.decoder.timestamps[0] < 0
    fps = source.fps
    numbers = np.arange(1, source.count + 1)
    read = []
    for n in numbers:
        segment = SegmentFrames.from_seconds("s", (n - 1) / fps, n / fps, fps)
        read.append(int(source.decoder.indices_at(segment.time_of(np.array([n])))[0]))
    monkeypatch.setattr(source.decoder, "frames", lambda indices: np.asarray(indices))
    assert source.read(numbers).tolist() == read
    assert source.count == source.decoder.num_frames - 2
    assert flow.first_frame_repeats(-2 / 28, 28.0, 280) == -2
    # a folder an earlier avda flow wrote of it (no first_frame_repeats) is refused: its flow
    # numbered those two frames, so it runs two frames behind (not ahead of) the RGB
    monkeypatch.setattr(flow, "_estimator", _zero_flow)
    manifest = _test_and_demo(start_sec=[0.0, 0.0]).iloc[1:].assign(video_path="cut.mp4")
    run = dict(out=tmp_path / "flow", videos=tmp_path, options=flow.FlowOptions(shorter_side=32),
               segments_only=True, margin=0.0, progress=False)  # fmt: skip
    assert flow.compute_flow(manifest, **run).ok
    info = json.loads((tmp_path / "flow" / "demo" / "flow.json").read_text())
    assert info.pop("first_frame_repeats") == -2
    (tmp_path / "flow" / "demo" / "flow.json").write_text(json.dumps(info))
    ((_, said),) = flow.compute_flow(manifest, **run).failures
    assert "behind avda's RGB on this video by 2 frame(s)), this run asks for -2" in said
    assert flow.first_frame_repeats(-0.25 / 25, 25.0, 100) == 0  # still shown at frame 1's middle
