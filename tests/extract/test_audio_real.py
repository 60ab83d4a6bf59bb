"""Audio decoding against independent references, on every real file with audio in
``../shared/data`` (mono, stereo, 5.1; AAC, MP3, AC3, PCM), damaged packets, and extraction
features of a stereo track against the same track passed as a mono WAV.

The references are written here, not taken from avda: PyAV's decode converted by FFmpeg's own
resampler (swresample, to packed float64) and mixed to mono by the channel mean; scipy's WAV
reader for PCM files.
"""

from __future__ import annotations

import fractions
import logging
import os
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import scipy.io.wavfile
import torch
import torchaudio

from avda.cache import Status, open_cache
from avda.extract import audio, backbones, decode, runner, sampling
from avda.extract.inputs import InputPaths, SegmentDataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(path: Path) -> tuple[np.ndarray, int, int]:
    """(mono float64 samples, rate, channels): PyAV + swresample, channel mean."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="dbl", layout=stream.codec_context.layout, rate=rate)
        pieces = []
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                pieces.append(converted.to_ndarray().reshape(-1, channels))
    interleaved = np.concatenate(pieces)
    return interleaved.mean(axis=1), rate, channels


@pytest.fixture(scope="module")
def ac3_avi(tmp_path_factory, media) -> Path:
    """test.avi's stereo MP3 track re-encoded to AC3 in an AVI (the layout of the issue)."""
    out = tmp_path_factory.mktemp("ac3") / "ac3.avi"
    with av.open(str(media / "video" / "test.avi")) as source, av.open(str(out), "w") as sink:
        stream = sink.add_stream("ac3", rate=44100, layout="stereo")
        for frame in source.decode(source.streams.audio[0]):
            frame.pts = None
            for packet in stream.encode(frame):
                sink.mux(packet)
        for packet in stream.encode(None):
            sink.mux(packet)
    return out


def _real_files(media: Path) -> list[Path]:
    files = [p for p in sorted((media / "video").iterdir()) if p.name != "demo.mp4"]
    files += sorted((media / "audio").glob("*.wav"))
    files += sorted((media / "audio" / "kitchen20").glob("*.wav"))[:4]
    return files


# (codec, channels) of each real file: the set must cover mono, stereo and 5.1.
LAYOUTS = {
    "bigbuckbunny.mp4": ("aac", 6),
    "test.avi": ("mp3float", 2),
    "v_GGSY1Qvo990.mp4": ("aac", 1),
    "v_ZNVhz7ctTq0.mp4": ("aac", 1),
    "test.wav": ("pcm_s16le", 2),
}


def test_every_real_file_with_audio_decodes_to_pyav_mono_mix(media, ac3_avi):
    files = [*_real_files(media), ac3_avi]
    seen = set()
    for path in files:
        ours = audio.read_audio(path)
        reference, rate, channels = _reference(path)
        assert ours.source_rate == ours.sample_rate == rate, path
        assert ours.channels == channels, path
        if path.name in LAYOUTS:
            assert (ours.codec, ours.channels) == LAYOUTS[path.name], path
        seen.add((ours.codec, channels))
        assert ours.samples.dtype == np.float32 and ours.samples.shape == reference.shape, path
        assert np.isfinite(ours.samples).all(), path
        np.testing.assert_allclose(ours.samples, reference, atol=1e-6, rtol=0, err_msg=str(path))
        assert ours.lost == () and ours.damaged_packets == 0
    codecs = {codec for codec, _ in seen}
    assert {"aac", "mp3float", "ac3", "pcm_s16le"} <= codecs
    assert {1, 2, 6} <= {channels for _, channels in seen}


def test_stereo_test_files_have_different_channels(media):
    """The stereo fixtures exercise the mix: left and right differ, so taking one channel or
    scrambling them would fail the comparison above."""
    for path in (media / "video" / "test.avi", media / "audio" / "test.wav"):
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=stream.rate)
            planes = [
                f.to_ndarray() for fr in container.decode(stream) for f in resampler.resample(fr)
            ]
        left, right = np.concatenate(planes, axis=1)
        assert np.abs(left - right).max() > 0.05, path


def test_pcm_wav_matches_scipy(media):
    rate, data = scipy.io.wavfile.read(media / "audio" / "test.wav")
    assert data.dtype == np.int16 and data.shape[1] == 2
    expected = (data.astype(np.float64) / 32768.0).mean(axis=1)
    ours = audio.read_audio(media / "audio" / "test.wav")
    assert ours.sample_rate == rate
    np.testing.assert_allclose(ours.samples, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", ["video/test.avi", "video/bigbuckbunny.mp4", "audio/test.wav"])
def test_resampled_track_is_torchaudio_resample_of_the_mono_mix(media, name):
    reference, rate, _ = _reference(media / name)
    expected = torchaudio.functional.resample(
        torch.from_numpy(reference.astype(np.float32)), rate, 16000
    ).numpy()
    ours = audio.read_audio(media / name, 16000)
    assert ours.sample_rate == 16000 and ours.samples.shape == expected.shape
    np.testing.assert_allclose(ours.samples, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ours.samples, audio.load_audio(media / name, 16000))


def _damage_packet(source: Path, out: Path, index: int) -> float:
    """Copy ``source`` with the payload of its ``index``-th audio packet overwritten by noise;
    returns the packet's start time (s)."""
    with av.open(str(source)) as container:
        stream = container.streams.audio[0]
        packets = [(p.pos, p.size, p.pts * p.time_base) for p in container.demux(stream) if p.size]
    position, size, start = packets[index]
    data = bytearray(source.read_bytes())
    data[position : position + size] = np.random.default_rng(0).bytes(size)
    out.write_bytes(bytes(data))
    return float(start)


def test_a_damaged_packet_becomes_silence_in_place(tmp_path, ac3_avi):
    damaged = tmp_path / "damaged.avi"
    start = _damage_packet(ac3_avi, damaged, 94)
    intact = audio.read_audio(ac3_avi)
    ours = audio.read_audio(damaged)
    assert ours.damaged_packets >= 1
    assert len(ours.lost) == 1
    lost_start, lost_stop = ours.lost[0]
    assert lost_start == pytest.approx(start, abs=0.04)
    assert 0.02 < ours.lost_seconds < 0.2  # one or two AC3 frames of 1536 samples, not the track
    # The timeline is kept: same length, the audio after the damage is where it was.
    assert ours.samples.shape == intact.samples.shape
    rate = ours.sample_rate
    lo, hi = int(lost_start * rate), int(np.ceil(lost_stop * rate))
    assert np.all(ours.samples[lo:hi] == 0)
    np.testing.assert_array_equal(ours.samples[:lo], intact.samples[:lo])
    # After it, the AC3 decoder's dither generator has advanced differently: equal to ~1e-3.
    margin = 1536  # one AC3 frame of decoder state after the damaged packet
    after, reference = ours.samples[hi + margin :], intact.samples[hi + margin :]
    np.testing.assert_allclose(after, reference, atol=5e-3, rtol=0)
    assert np.corrcoef(after, reference)[0, 1] > 0.999
    assert ours.lost_between(0.0, 1.0) == 0.0
    assert ours.lost_between(lost_start - 1, lost_stop + 1) == pytest.approx(ours.lost_seconds)


def _stereo_manifest(video_id: str, rows: list[tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uid": [f"{video_id}_{i}" for i in range(len(rows))],
            "video_id": video_id,
            "domain": "d",
            "split": "train",
            "start_sec": [a for a, _ in rows],
            "stop_sec": [b for _, b in rows],
        }
    )


def _extract_audio(manifest, out, *, videos=None, audio_dir=None) -> np.ndarray:
    result = runner.extract(
        manifest,
        videos=videos,
        audio=audio_dir,
        out=out,
        recipe=sampling.get("audio-adaptive"),
        modalities=[runner.ModalitySpec("audio", "audio_resnet18")],
        workers=0,
        progress=False,
        precision="float32",
    )
    assert result.failed == 0 and result.done == len(manifest)
    store = open_cache(out)
    assert (store.status("audio") == Status.DONE).all()
    return store.features("audio")[:].astype(np.float32)


def test_stereo_video_features_equal_pyav_mono_wav_features_and_are_deterministic(tmp_path, media):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.avi").symlink_to(media / "video" / "test.avi")
    manifest = _stereo_manifest("clip", [(0.0, 2.5), (2.0, 6.5), (4.0, 5.0)])
    manifest["video_path"] = "clip.avi"
    from_video = _extract_audio(manifest, tmp_path / "a.zarr", videos=videos)
    again = _extract_audio(manifest, tmp_path / "b.zarr", videos=videos)
    np.testing.assert_array_equal(from_video, again)  # bit-identical
    assert np.isfinite(from_video).all() and np.abs(from_video).sum() > 0

    # The same track decoded by PyAV (reference above), mixed to mono, written as a WAV.
    reference, rate, _ = _reference(media / "video" / "test.avi")
    wavs = tmp_path / "wav"
    wavs.mkdir()
    scipy.io.wavfile.write(wavs / "clip.wav", rate, reference.astype(np.float32))
    from_wav = _extract_audio(
        manifest.drop(columns="video_path"), tmp_path / "c.zarr", audio_dir=wavs
    )
    relative = np.linalg.norm(from_video - from_wav) / np.linalg.norm(from_wav)
    assert relative < 1e-3  # measured: 0 (the same samples reach the backbone)
    # And the old decord mix (channels scrambled) would not pass: a single channel does not.
    left_only = wavs.parent / "left"
    left_only.mkdir()
    with av.open(str(media / "video" / "test.avi")) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=stream.rate)
        left = np.concatenate(
            [f.to_ndarray()[0] for fr in container.decode(stream) for f in resampler.resample(fr)]
        )
    scipy.io.wavfile.write(left_only / "clip.wav", rate, left.astype(np.float32))
    from_left = _extract_audio(
        manifest.drop(columns="video_path"), tmp_path / "d.zarr", audio_dir=left_only
    )
    # Random-weight features are insensitive (measured 3.3e-3), the spectrograms are not.
    assert np.linalg.norm(from_video - from_left) / np.linalg.norm(from_left) > 1e-3
    spec = backbones.create("audio_resnet18", modality="audio").input_spec
    recipe = sampling.get("audio-adaptive")

    def spectrograms(inputs: InputPaths, frame: pd.DataFrame) -> torch.Tensor:
        dataset = SegmentDataset(
            frame, np.arange(len(frame)), inputs, recipe, "audio", spec, "vggsound"
        )
        return torch.stack([dataset[i][1] for i in range(len(frame))])

    video_spec = spectrograms(InputPaths(videos=videos), manifest)
    wav_spec = spectrograms(InputPaths(audio=wavs), manifest.drop(columns="video_path"))
    left_spec = spectrograms(InputPaths(audio=left_only), manifest.drop(columns="video_path"))
    assert torch.equal(video_spec, wav_spec)
    assert (video_spec - left_spec).norm() / left_spec.norm() > 0.01  # measured 0.034


def test_damaged_audio_in_extraction_notes_or_fails_the_segment(tmp_path, ac3_avi):
    videos = tmp_path / "videos"
    videos.mkdir()
    start = _damage_packet(ac3_avi, videos / "clip.avi", 94)
    # A 10 s window around the damage (mostly intact: a note), one inside it (failed), one away.
    manifest = _stereo_manifest(
        "clip", [(start - 1.0, start + 1.0), (start + 0.005, start + 0.025), (0.0, 1.0)]
    )
    manifest["video_path"] = "clip.avi"
    result = runner.extract(
        manifest,
        videos=videos,
        out=tmp_path / "s.zarr",
        recipe=sampling.get("audio-adaptive"),
        modalities=[runner.ModalitySpec("audio", "audio_resnet18")],
        workers=0,
        progress=False,
        precision="float32",
    )
    store = open_cache(tmp_path / "s.zarr")
    status, errors = store.status("audio"), store.errors("audio")
    assert status.tolist() == [Status.DONE, Status.FAILED, Status.DONE]
    assert "lost to damaged packets" in errors[0] and errors[0].startswith("note:")
    assert "damaged packets" in errors[1] and "clip_1" in errors[1]
    assert errors[2] == ""
    assert result.failed == 1
    assert np.isfinite(store.features("audio")[:]).all()


def test_a_files_warning_from_several_decoding_workers_is_logged_once(tmp_path, ac3_avi, caplog):
    # Each decoding worker that opened the file logged its damaged packet: once per worker
    # (and per fine-tuning epoch), printed from the worker. Now the workers' records come back
    # with their items and the main process logs each once.
    videos = tmp_path / "videos"
    videos.mkdir()
    _damage_packet(ac3_avi, videos / "clip.avi", 94)
    manifest = _stereo_manifest("clip", [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)])
    manifest["video_path"] = "clip.avi"
    with caplog.at_level(logging.WARNING, logger="avda"):
        runner.extract(
            manifest,
            videos=videos,
            out=tmp_path / "s.zarr",
            recipe=sampling.get("audio-adaptive"),
            modalities=[runner.ModalitySpec("audio", "audio_resnet18")],
            workers=2,
            progress=False,
            precision="float32",
        )
    damaged = [r for r in caplog.records if "damaged audio packet" in r.getMessage()]
    assert len(damaged) == 1, [r.getMessage() for r in caplog.records]
    assert damaged[0].process == os.getpid() and damaged[0].name == "avda.extract.audio"
    assert (open_cache(tmp_path / "s.zarr").status("audio") == Status.DONE).all()


def test_samples_are_placed_by_timestamp_when_a_packet_is_missing(tmp_path):
    """A stream with a hole in its timestamps (a dropped packet): the hole is silence."""
    path = tmp_path / "gap.mka"
    rate, size = 8000, 400
    tone = np.sin(2 * np.pi * 440 * np.arange(size * 10) / rate).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_f32le", rate=rate, layout="mono")
        for i in range(10):
            if i == 4:
                continue  # packet 4 is missing
            frame = av.AudioFrame.from_ndarray(
                tone[None, i * size : (i + 1) * size], format="flt", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts, frame.time_base = i * size, fractions.Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    track = audio.read_audio(path)
    assert track.samples.shape == (size * 10,)
    assert track.lost == ((4 * size / rate, 5 * size / rate),)
    expected = tone.copy()
    expected[4 * size : 5 * size] = 0
    np.testing.assert_array_equal(track.samples, expected)


def _remux_shifted(source: Path, out: Path, *, audio: float = 0.0, video: float = 0.0) -> None:
    """Copy ``source``'s packets into an mp4 with its audio / video stream starting ``audio`` /
    ``video`` seconds later (no re-encoding: the same decoded samples and frames)."""
    with av.open(str(source)) as src, av.open(str(out), "w", format="mp4") as sink:
        streams = [s for s in src.streams if s.type in ("audio", "video")]
        outs = {s.index: sink.add_stream_from_template(s) for s in streams}
        for packet in src.demux(streams):
            if packet.dts is None:  # the flush packets
                continue
            shift = audio if packet.stream.type == "audio" else video
            ticks = int(round(shift / packet.time_base))
            packet.pts += ticks
            packet.dts += ticks
            packet.stream = outs[packet.stream.index]
            sink.mux(packet)


@pytest.mark.parametrize("name", ["v_ZNVhz7ctTq0.mp4", "bigbuckbunny.mp4"])
@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_audio_keeps_its_place_beside_the_video_when_the_streams_start_apart(
    tmp_path, media, name, backend
):
    """Sample 0 is at the video's first frame, the time 0 of the frame timestamps: audio that
    starts 1 s after the video begins with 1 s of silence, audio that starts before the video
    loses what precedes its first frame (a track whose first sample was taken as time 0 played
    1 s late / 0.5 s early beside the video)."""
    if backend == "decord" and not decode.decord_available():
        pytest.skip("decord is not installed on this platform")
    source = media / "video" / name
    reference, rate, _ = _reference(source)  # PyAV's own decoding of the unshifted file
    late_audio, late_video = tmp_path / "late-audio.mp4", tmp_path / "late-video.mp4"
    _remux_shifted(source, late_audio, audio=1.0)
    _remux_shifted(source, late_video, video=0.5)
    for path in (source, late_audio, late_video):  # the frames' time 0 is the first frame
        assert decode.VideoDecoder(path, backend=backend).timestamps[0] == pytest.approx(0.0)
    ours = audio.read_audio(late_audio)
    assert ours.samples.shape == (rate + len(reference),)
    assert ours.lost == ()
    assert np.all(ours.samples[:rate] == 0)
    np.testing.assert_allclose(ours.samples[rate:], reference, atol=1e-6, rtol=0)
    ours = audio.read_audio(late_video)
    assert ours.samples.shape == (len(reference) - rate // 2,)
    np.testing.assert_allclose(ours.samples, reference[rate // 2 :], atol=1e-6, rtol=0)
