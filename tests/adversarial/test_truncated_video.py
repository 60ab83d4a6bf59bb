"""A video file cut short (an interrupted download or copy) whose header still gives the whole
length: a segment running past the cut fails, naming the cut, instead of storing clips made of
its last frame repeated (a new user's whole-video extraction of such a file stored them done).
The audio note of a segment counts only the seconds its window reads."""

from __future__ import annotations

import dataclasses
import fractions
import logging

import av
import numpy as np
import pandas as pd
import pytest

from avda.cache import Status, open_cache
from avda.data_manifests import whole_videos
from avda.errors import MediaError
from avda.extract import audio as audio_lib
from avda.extract import runner
from avda.extract.decode import VideoDecoder
from avda.extract.inputs import _lost_note, _used_spans
from tests.extract.conftest import tiny


@pytest.fixture(scope="module")
def cut_video(media, tmp_path_factory):
    source = media / "video" / "v_GGSY1Qvo990.mp4"  # 18.16 s, 19.62 fps
    folder = tmp_path_factory.mktemp("cut")
    (folder / "cut.mp4").write_bytes(source.read_bytes()[:380_000])  # frames stop near 9 s
    (folder / "whole.mp4").write_bytes(source.read_bytes())
    return folder


def _extract(manifest, folder, out, *, audio=False):
    modalities = [runner.ModalitySpec("rgb", "i3d")]
    if audio:
        modalities.append(runner.ModalitySpec("audio", "audio_resnet18"))
    return runner.extract(
        manifest,
        videos=folder,
        out=out,
        recipe=tiny("demo", resize_shorter=32, crop_size=32),
        modalities=modalities,
        workers=0,
        progress=False,
    )


def test_a_segment_past_the_cut_fails_and_one_before_it_is_done(cut_video, tmp_path):
    decoder = VideoDecoder(cut_video / "cut.mp4", shorter_side=32)
    header = whole_videos.duration(cut_video / "cut.mp4")
    assert header > 18 and 8 < decoder.duration < 10  # the header keeps the whole length
    # Whole videos: each segment runs to its header's duration; the cut file's lies less than
    # half past its last frame, which the slack for annotations would have let through.
    manifest, root = whole_videos.manifest(cut_video)
    _extract(manifest, root, tmp_path / "whole.zarr", audio=True)
    store = open_cache(tmp_path / "whole.zarr")
    status = dict(zip(store.segments["uid"], store.status("rgb"), strict=True))
    errors = dict(zip(store.segments["uid"], store.errors("rgb"), strict=True))
    assert status["whole"] == Status.DONE and errors["whole"] == ""
    assert status["cut"] == Status.FAILED
    assert "was cut short" in errors["cut"] and f"{decoder.duration:.2f} s" in errors["cut"]
    # Its audio: the recipe's 2 s window lies before the cut, so no note (it said 8.8 s of the
    # segment's 18 s were lost, seconds no window reads).
    audio = dict(zip(store.segments["uid"], store.errors("audio"), strict=True))
    assert store.status("audio").tolist() == [Status.DONE, Status.DONE]
    assert audio["cut"] == "", audio["cut"]
    # A segment inside the frames the file still has is extracted as from the whole file.
    rows = [
        {"uid": u, "video_id": v, "domain": "d", "split": "test", "start_sec": 1.0,
         "stop_sec": 6.0, "verb_class": 0}
        for u, v in (("a", "cut"), ("b", "whole"))
    ]  # fmt: skip
    _extract(pd.DataFrame(rows), cut_video, tmp_path / "early.zarr")
    early = open_cache(tmp_path / "early.zarr")
    assert list(early.status("rgb")) == [Status.DONE, Status.DONE]
    features = early.features("rgb")[:]
    np.testing.assert_allclose(features[0], features[1], atol=1e-5)


def test_a_segment_that_starts_after_the_cut_is_told_to_re_download(cut_video, tmp_path):
    # it said "starts at 12.00 s, after the end of the video (9.xx s); fix its times in the
    # manifest": its times are right, the file is cut
    rows = [{"uid": "late", "video_id": "cut", "domain": "d", "split": "test",
             "start_sec": 12.0, "stop_sec": 14.0, "verb_class": 0}]  # fmt: skip
    _extract(pd.DataFrame(rows), cut_video, tmp_path / "late.zarr", audio=True)
    store = open_cache(tmp_path / "late.zarr")
    for modality in ("rgb", "audio"):
        assert store.status(modality).tolist() == [Status.FAILED]
        error = store.errors(modality)[0]
        assert "the file was cut short" in error and "re-download it" in error, error
        assert "fix its times" not in error


def test_the_audio_note_counts_the_window_the_cut_reads(cut_video, caplog):
    with caplog.at_level(logging.WARNING, logger="avda.extract.audio"):
        track = audio_lib.read_audio(cut_video / "cut.mp4", 16000)
    # the cut is logged as a cut, not also as a damaged packet and seconds of silence
    assert "(cut short)" in caplog.text and "damaged audio packet" not in caplog.text
    (lost_from, _), *_ = track.lost
    assert 7 < lost_from < 10
    segment = pd.Series({"uid": "cut", "start_sec": 0.0, "stop_sec": 18.0})
    # The tiling cut reads the first 10 s of an 18 s window: of those, 10 - lost_from are lost.
    recipe = tiny("demo", audio_seconds=10.0, audio_cut="tile")
    used = _used_spans([(0.0, 18.0)], recipe)
    assert used == [(0.0, 10.0)]
    # The segment runs past the cut: it fails, as its frames do (its 10 s window was stored as
    # done with a note blaming "damaged packets" for the seconds past the cut)
    with pytest.raises(MediaError, match="the file was cut short") as error:
        _lost_note(track, segment, used)
    assert f"{10 - lost_from:.2f} s of its 10.00 s of audio lie past the end" in str(error.value)
    # A segment that ends before the cut, whose window reaches past it: a note naming the cut
    before = pd.Series({"uid": "before", "start_sec": lost_from - 2.0, "stop_sec": lost_from})
    note = _lost_note(track, before, [(lost_from - 2.0, lost_from + 0.5)])
    assert note == (
        f"note: 0.50 s of 2.50 s of audio past the end of a file cut short at {lost_from:.2f} s "
        "(silence)"
    )
    # A 2 s window of the same segment reads nothing past the cut: no note (it said 8.8 s of
    # 18 s were lost, counting seconds no window reads).
    short = tiny("demo", audio_seconds=2.0, audio_cut="tile")
    assert _lost_note(track, segment, _used_spans([(0.0, 18.0)], short)) == ""
    tbn = tiny("demo", audio_seconds=1.278, audio_cut="tbn")
    assert _used_spans([(3.0, 4.278)], tbn) == [(3.0, 4.278)]
    # A window past the cut fails naming the cut, not "damaged packets".
    assert track.cut_at == pytest.approx(lost_from)
    with pytest.raises(MediaError, match="the file was cut short") as error:
        _lost_note(track, segment, [(12.0, 14.0)], cut_video / "cut.mp4")
    assert f"({lost_from:.2f} s of the {track.duration:.2f} s its container" in str(error.value)
    assert "damaged packets" not in str(error.value)
    # Damaged packets before the cut are not blamed on it.
    damaged = dataclasses.replace(track, lost=((1.0, 3.0), *track.lost))
    with pytest.raises(MediaError, match="lost to damaged packets; re-encode") as error:
        _lost_note(damaged, segment, [(1.0, 3.0)], cut_video / "cut.mp4")


def _healthy(path, *, audio_seconds=0.0, held=0.0):
    """A 4 s video (25 fps, 64x48) that is whole: with a longer audio track, or its last frame
    shown for ``held`` more seconds (variable frame rate). Its header's duration exceeds its
    last frame's time, as a cut file's does, but its index lists every frame it holds."""
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=25)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    audio = container.add_stream("aac", rate=48000) if audio_seconds else None
    if held:
        video.time_base = fractions.Fraction(1, 1000)
    times = [i * 40 for i in range(100)] + ([int((4 + held) * 1000)] if held else [])
    for i, pts in enumerate(times):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 2 % 255, np.uint8), "rgb24")
        if held:
            frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
        for packet in video.encode(frame):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if audio is not None:
        for start in range(0, int(audio_seconds * 48000), 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
            frame.sample_rate, frame.pts = 48000, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    container.close()


def test_a_whole_file_longer_in_its_header_than_its_frames_is_not_cut(tmp_path):
    """Matroska's header gives the container's duration (its audio's, 8 s: the video stream has
    none), and its index lists no frames; an MP4 whose last frame is held 6 s. Neither is cut:
    a segment running a little past the last frame is extracted, as before."""
    folder = tmp_path / "videos"
    folder.mkdir()
    _healthy(folder / "audio.mkv", audio_seconds=8.0)
    _healthy(folder / "held.mp4", held=6.0)
    assert whole_videos.duration(folder / "audio.mkv") > 7.5  # what whole-video mode reads
    assert VideoDecoder(folder / "audio.mkv").duration == pytest.approx(4.0, abs=0.05)
    rows = [
        {"uid": u, "video_id": u, "video_path": f"{u}.{ext}", "domain": "d", "split": "test",
         "start_sec": 3.0, "stop_sec": 4.4 if u == "audio" else 10.5, "verb_class": 0}
        for u, ext in (("audio", "mkv"), ("held", "mp4"))
    ]  # fmt: skip
    _extract(pd.DataFrame(rows), folder, tmp_path / "healthy.zarr")
    store = open_cache(tmp_path / "healthy.zarr")
    assert list(store.status("rgb")) == [Status.DONE, Status.DONE], store.errors("rgb")
