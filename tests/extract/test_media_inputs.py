"""Real and synthetic media through extraction: variable frame rate, several audio streams,
corrupt packets, wav folders with each backbone's audio window, spatial maps."""

from __future__ import annotations

import fractions
import math
import os
import shutil

import av
import numpy as np
import pandas as pd
import pytest
import torch
from tests.extract.conftest import tiny

from avda.cache import Status, open_cache
from avda.errors import ConfigError
from avda.extract import audio, backbones, runner, sampling
from avda.extract.decode import VideoDecoder
from avda.extract.inference import features_and_spatial
from avda.extract.inputs import InputPaths, SegmentDataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _manifest(rows: list[dict]) -> pd.DataFrame:
    base = {"domain": "d", "split": "train"}
    return pd.DataFrame([{**base, **row} for row in rows])


def _vfr_video(path, pts_ms: list[int]):
    """Lossless video whose frame i is filled with 20 * i, shown at ``pts_ms[i]``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "rgb24"
        stream.options = {"crf": "0"}
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), "rgb24")
            frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_variable_frame_rate_maps_times_through_container_timestamps(tmp_path):
    pts = [0, 40, 80, 200, 240, 500, 540, 580, 1000, 1040]
    _vfr_video(tmp_path / "vfr.mkv", pts)
    decoder = VideoDecoder(tmp_path / "vfr.mkv")
    np.testing.assert_allclose(decoder.timestamps, np.array(pts) / 1000)
    frames = decoder.frames(decoder.indices_at(np.array([0.1, 0.21, 0.45, 0.6, 1.01])))
    assert frames[:, 0, 0, 0].tolist() == [40, 60, 80, 140, 160]  # frames 2, 3, 4, 7, 8
    # Through a recipe: 4 frames at 10 Hz around the centre of [0.0, 1.0] = 0.35 .. 0.65 s.
    recipe = sampling.Recipe(
        name="vfr", num_clips=1, num_frames=4, frame_rate=10.0, resize_shorter=32, crop_size=32
    )
    spec = backbones.create("i3d", modality="rgb").input_spec
    segments = _manifest(
        [
            {
                "uid": "a",
                "video_id": "vfr",
                "start_sec": 0.0,
                "stop_sec": 1.0,
                "video_path": "vfr.mkv",
            }
        ]
    )
    dataset = SegmentDataset(
        segments, np.array([0]), InputPaths(videos=tmp_path), recipe, "rgb", spec, None
    )
    _, x, status, _ = dataset[0]
    assert status == Status.DONE
    # 0.35 and 0.45 s show frame 4 (from 0.24 s), 0.55 frame 6 (0.54 s), 0.65 frame 7 (0.58 s)
    assert x[0, :, 0, 0, 0].tolist() == [80, 80, 120, 140]


def test_first_of_several_audio_streams_is_used(tmp_path):
    path = tmp_path / "two.mkv"
    t = np.arange(16000) / 16000
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264rgb", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "rgb24"
        streams = []
        for _ in range(2):
            stream = container.add_stream("pcm_s16le", rate=16000)
            stream.layout = "mono"
            streams.append(stream)
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i, np.uint8), "rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        for stream, frequency in zip(streams, (440, 3000), strict=True):
            wave = (0.5 * np.sin(2 * np.pi * frequency * t) * 32767).astype(np.int16)
            for offset in range(0, 16000, 1600):
                frame = av.AudioFrame.from_ndarray(
                    wave[None, offset : offset + 1600], "s16", layout="mono"
                )
                frame.sample_rate, frame.pts = 16000, offset
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    samples = audio.load_audio(path, 16000)
    spectrum = np.abs(np.fft.rfft(samples[:16000]))
    assert np.argmax(spectrum) * 16000 / 16000 == pytest.approx(440, abs=2)


def test_corrupt_packets_are_concealed_not_fatal(tmp_path, media):
    path = tmp_path / "corrupt.mp4"
    shutil.copy(media / "video" / "v_ZNVhz7ctTq0.mp4", path)
    size, rng = os.path.getsize(path), np.random.default_rng(0)
    with open(path, "r+b") as handle:
        for fraction in (0.3, 0.5, 0.7):
            handle.seek(int(size * fraction))
            handle.write(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    clean = VideoDecoder(media / "video" / "v_ZNVhz7ctTq0.mp4", shorter_side=48)
    damaged = VideoDecoder(path, shorter_side=48)
    indices = np.arange(0, damaged.num_frames, 7)
    frames = damaged.frames(indices)  # decord alone fails this batch
    difference = np.abs(frames.astype(int) - clean.frames(indices).astype(int)).mean(axis=(1, 2, 3))
    assert frames.shape == (len(indices), 48, 64, 3)
    assert np.mean(difference == 0) > 0.7 and difference.max() < 40


def test_frames_lost_inside_an_avi_are_noted_on_its_done_segments(tmp_path, media, caplog):
    # 4 KB of garbage in test.avi (no pts: the AVI demuxer numbers frames by count) lost 3
    # video packets: every later frame moved 0.12 s early, stored as done without a word
    videos = tmp_path / "videos"
    videos.mkdir()
    data = bytearray((media / "video" / "test.avi").read_bytes())
    data[147283 : 147283 + 4096] = np.random.default_rng(1).bytes(4096)
    (videos / "g.avi").write_bytes(bytes(data))
    shutil.copy(media / "video" / "test.avi", videos / "clean.avi")
    manifest = pd.DataFrame({
        "uid": ["g1", "g2", "c1"], "video_id": ["g", "g", "clean"], "domain": "d",
        "split": "train", "start_sec": [2.5, 4.0, 2.5], "stop_sec": [3.7, 6.0, 3.7],
        "video_path": ["g.avi", "g.avi", "clean.avi"]})  # fmt: skip
    with caplog.at_level("WARNING", logger="avda"):
        runner.extract(manifest, videos=videos, out=tmp_path / "s.zarr", recipe=tiny("demo"),
                       modalities=[runner.ModalitySpec("rgb", "i3d")], workers=0,
                       progress=False)  # fmt: skip
    store = open_cache(tmp_path / "s.zarr")
    assert (store.status("rgb") == Status.DONE).all()
    errors = store.errors("rgb")
    for note in errors[:2]:
        assert note.startswith("note: ")
        assert "index lists 164 frames but it holds 161: 3 lost" in note
        assert "read up to 0.12 s early" in note
    assert errors[2] == ""
    assert caplog.text.count("index lists 164 frames") == 1  # once per file


def reference_tbn_sound(samples, rate, centre_sec):
    """temporal-binding-network dataset._extract_sound_feature (the window part)."""
    left_sec, right_sec = centre_sec - 0.639, centre_sec + 0.639
    duration = samples.shape[0] / float(rate)
    left_sample, right_sample = int(round(left_sec * rate)), int(round(right_sec * rate))
    if left_sec < 0:
        return samples[: int(round(rate * 1.279))]
    if right_sec > duration:
        return samples[-int(round(rate * 1.279)) :]
    return samples[left_sample:right_sample]


def reference_vggsound_clip(samples, rate, start_sec, stop_sec):
    """xiaobai1217/DomainAdaptation dataloader: cut by round(t / duration * n), 10 s, tile."""
    duration = len(samples) / rate
    start1 = int(np.round(start_sec / duration * len(samples)))
    end1 = int(np.round(stop_sec / duration * len(samples)))
    samples = samples[start1:end1]
    resamples = samples[:160000]
    while len(resamples) < 160000:
        resamples = np.tile(resamples, 10)[:160000]
    return resamples


def test_audio_windows_match_tbn_and_vggsound_reference_cuts():
    rate = 24000
    samples = np.random.default_rng(0).normal(size=rate * 5).astype(np.float32)
    for centre in (0.2, 2.0, 4.9):
        ours = audio.window_tbn(samples, rate, centre - 0.639, centre + 0.639, 1.278)
        np.testing.assert_array_equal(ours, reference_tbn_sound(samples, rate, centre))
    rate = 16000
    samples = samples[: rate * 5]
    for start, stop in ((0.3, 1.7), (1.0, 4.99)):
        ours = audio.window_tile_round(samples, rate, start, stop, 10.0)
        np.testing.assert_array_equal(ours, reference_vggsound_clip(samples, rate, start, stop))


def test_wav_folder_audio_for_tbn_snippets_and_vggsound(tmp_path, media):
    folder = tmp_path / "wav" / "P01"
    folder.mkdir(parents=True)
    shutil.copy(media / "audio" / "kitchen20" / "0-101477-A-3.wav", folder / "P01_01.wav")
    segments = _manifest(
        [
            {
                "uid": "s0",
                "video_id": "P01_01",
                "start_sec": 0.5,
                "stop_sec": 3.0,
                "start_frame": 31,
                "stop_frame": 181,
                "fps": 60.0,
            }
        ]
    )
    inputs = InputPaths(audio=tmp_path / "wav")
    tbn = backbones.create("tbn", modality="audio").input_spec
    dataset = SegmentDataset(
        segments, np.array([0]), inputs, sampling.get("ta3n"), "audio", tbn, "tbn"
    )
    _, x, status, error = dataset[0]
    assert status == Status.DONE, error
    assert x.shape == (25, 1, 256, 256)  # TBN: 25 snippets, log |STFT|^2 of 1.278 s at 24 kHz
    samples = audio.load_audio(folder / "P01_01.wav", 24000)
    centre = sampling.get("ta3n").audio_windows_of(dataset._segment_frames(segments.iloc[0], None))
    start, stop = centre[0]
    expected = audio.tbn_spectrogram(
        torch.from_numpy(reference_tbn_sound(samples, 24000, (start + stop) / 2))
    )
    torch.testing.assert_close(x[0, 0], expected[:, :256])
    out = tmp_path / "a.zarr"
    result = runner.extract(
        segments,
        out=out,
        audio=tmp_path / "wav",
        recipe=sampling.get("audio-adaptive"),
        modalities=[runner.ModalitySpec("audio", "audio_resnet18")],
        workers=0,
        progress=False,
    )
    assert result.ok and result.done == 1
    store = open_cache(out)
    assert store.features("audio").shape == (1, 1, 512)
    assert store.modality_info("audio")["input"] == {"source": "audio-files"}


def test_features_and_spatial_agree_with_forward_features():
    torch.manual_seed(0)
    for name, modality, shape in (
        ("i3d", "rgb", (2, 3, 16, 64, 64)),
        ("tbn", "flow", (2, 10, 64, 64)),
    ):
        model = backbones.create(name, modality=modality).eval()
        x = torch.randn(shape)
        with torch.inference_mode():
            features, maps = features_and_spatial(model, x, True)
            torch.testing.assert_close(features, model.forward_features(x))
        assert maps.shape == (2, 1024, 2, 2)


def test_spatial_maps_are_stored_for_cia(epic_folders, tmp_path):
    rgb_root, flow_root, manifest = epic_folders
    out = tmp_path / "cia.zarr"
    result = runner.extract(
        manifest,
        out=out,
        frames=rgb_root,
        recipe=tiny("cia"),
        workers=0,
        progress=False,
        modalities=[runner.ModalitySpec("rgb", "tbn")],
        batch_size=25,
        chunk_rows=2,
    )
    assert result.ok
    store = open_cache(out)
    maps = store.load_spatial("rgb")
    assert maps.shape == (2, 25, 1024, 2, 2)
    assert store.modality_info("rgb")["spatial_shape"] == [1024, 2, 2]
    np.testing.assert_allclose(maps.mean(axis=(-1, -2)), store.load("rgb"), atol=2e-2, rtol=1e-2)
    assert math.prod(store.spatial("rgb").chunks) * 2 <= 64 * 2**20


def test_recipes_a_backbone_cannot_take_are_refused_before_any_store(tmp_path):
    segments = _manifest([{"uid": "a", "video_id": "v", "start_sec": 0.0, "stop_sec": 1.0}])
    options = dict(videos=tmp_path, workers=0, progress=False)
    with pytest.raises(ConfigError, match="tbn audio takes 1.279 s windows"):
        runner.extract(
            segments,
            out=tmp_path / "a.zarr",
            recipe=sampling.get("mmsada"),
            modalities=[runner.ModalitySpec("audio", "tbn")],
            **options,
        )
    with pytest.raises(ConfigError, match="samples 16 rgb frame.*tbn rgb takes 1"):
        runner.extract(
            segments,
            out=tmp_path / "b.zarr",
            recipe=sampling.get("mmsada"),
            modalities=[runner.ModalitySpec("rgb", "tbn")],
            **options,
        )
    with pytest.raises(ConfigError, match="multiple of 4"):
        runner.extract(
            segments,
            out=tmp_path / "c.zarr",
            recipe=tiny("ta3n"),
            modalities=[runner.ModalitySpec("rgb", "slowfast")],
            **options,
        )
    assert not list(tmp_path.glob("*.zarr"))
