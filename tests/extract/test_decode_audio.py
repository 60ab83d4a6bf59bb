"""Decoding real media: fractional fps, 5.1 audio, no audio track, corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from avda.data_manifests.demo import write_video
from avda.errors import MediaError
from avda.extract import audio
from avda.extract.decode import VideoDecoder, probe, resized_size


def test_fractional_fps_maps_seconds_to_frames(media):
    decoder = VideoDecoder(media / "video" / "v_GGSY1Qvo990.mp4", shorter_side=64)
    assert decoder.fps == pytest.approx(981 / 50, rel=1e-3)
    # Frame shown at t is floor(t * fps) for a constant-rate file.
    times = np.array([0.0, 1.0, 5.0, 10.0])
    np.testing.assert_array_equal(decoder.indices_at(times), np.floor(times * 19.62).astype(int))
    frames = decoder.frames(np.array([3, 0, 3]))
    assert frames.shape == (3, 64, 85, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0], frames[2])
    # Past the end: the last frame repeats (clamping).
    assert decoder.indices_at(np.array([1e4]))[0] == decoder.num_frames - 1


def test_resize_keeps_aspect_ratio():
    assert resized_size(1280, 720, 256) == (455, 256)
    assert resized_size(240, 320, 128) == (128, 171)
    assert resized_size(100, 50, None) == (100, 50)


def test_lossless_fixture_frames_are_decoded_exactly(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 48, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / "lossless.mkv", frames, fps=12, codec="libx264rgb", crf=0)
    decoded = VideoDecoder(path).frames(np.arange(12))
    np.testing.assert_array_equal(decoded, frames)


def test_five_one_audio_is_mixed_to_mono_and_resampled(media):
    path = media / "video" / "bigbuckbunny.mp4"
    info = probe(path)
    assert info.audio_channels == (6,)
    samples = audio.load_audio(path, 16000)
    assert samples.ndim == 1 and samples.dtype == np.float32
    assert len(samples) == pytest.approx(5.3 * 16000, rel=0.02)


def test_video_without_audio_track(media):
    with pytest.raises(audio.NoAudioTrack, match="no audio track"):
        audio.load_audio(media / "video" / "demo.mp4", 16000)


def test_wav_file_and_window_tiling(media):
    samples = audio.load_audio(media / "audio" / "test.wav", 16000)
    assert samples.ndim == 1
    short = np.arange(10, dtype=np.float32)
    tiled = audio.window(short, 10, 0.0, 1.0, length=2.5)
    np.testing.assert_array_equal(tiled, np.concatenate([short, short, short[:5]]))


def test_corrupt_and_missing_files_raise_media_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(MediaError, match="bad.mp4"):
        VideoDecoder(bad)
    with pytest.raises(MediaError, match="not found"):
        VideoDecoder(tmp_path / "absent.mp4")


def test_vggsound_spectrogram_matches_scipy():
    x = np.random.default_rng(1).uniform(-1, 1, 16000 * 2)
    _, _, reference = scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=353)
    reference = np.log(reference + 1e-7)
    reference = (reference - reference.mean()) / (reference.std() + 1e-9)
    ours = audio.vggsound_spectrogram(torch.from_numpy(x)).numpy()
    assert ours.shape == reference.shape == (257, 199)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_tbn_spectrogram_shape():
    x = torch.zeros(30672)
    assert audio.tbn_spectrogram(x).shape == (256, 256)
