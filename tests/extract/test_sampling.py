"""Sampling recipes against the reference code's own index arithmetic.

Each ``reference_*`` function below transcribes the sampling of a published implementation
(cited) line by line, so that the recipes are checked against the references, not against
themselves.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from tests.conftest import REPO

from avda.errors import ConfigError
from avda.extract import sampling
from avda.extract.runner import recipe_differences
from avda.extract.sampling import Recipe, SegmentFrames
from avda.extract.transforms import centre_crop

# (start_frame, stop_frame): ordinary, long, shorter than a window, at the very start, tiny.
SEGMENTS = [(1200, 1390), (500, 4800), (2000, 2020), (3, 40), (50, 51)]


def reference_mmsada_test(start: int, stop: int, temporal_window: int = 16) -> np.ndarray:
    """jonmun/MM-SADA-code src/data_gen/batch_generator.py, sample_segment_test.c3d_sampling."""
    half_sample_frame = int(temporal_window / 2)
    step = 2
    segment_start = int(start) + (step * half_sample_frame)
    segment_end = int(stop) + 1 - (step * half_sample_frame)
    if segment_start >= segment_end:
        segment_start = int(start)
        segment_end = int(stop)
    if segment_start <= half_sample_frame * step + 1:
        segment_start = half_sample_frame * step + 2
    windows = []
    for center_frame in np.linspace(segment_start, segment_end, 7, dtype=np.int32)[1:-1]:
        windows.append(
            list(
                range(
                    center_frame - (step * half_sample_frame),
                    center_frame + (step * half_sample_frame),
                    step,
                )
            )
        )
    return np.asarray(windows)


def reference_tbn_test(
    start_frame: int, stop_frame: int, *, new_length: int, ratio: float, num_segments: int = 25
) -> np.ndarray:
    """ekazakos/temporal-binding-network: EpicKitchens record (start - 1, stop - 2),
    dataset._get_test_indices, dataset.get and _load_data; returns 1-based file numbers
    (the repo's symlinks are 0-based names of the 1-based EPIC files)."""
    record_start, record_end = start_frame - 1, stop_frame - 2
    num_frames = (record_end - record_start) * ratio
    tick = (num_frames - new_length + 1) / float(num_segments)
    offsets = np.array([int(tick / 2.0 + tick * x) for x in range(num_segments)])
    files = []
    for seg_ind in offsets:
        p = int(seg_ind)
        row = []
        for _ in range(new_length):
            index = int(np.floor(record_start * ratio)) + p  # _load_data (RGB: ratio 1)
            row.append(index + 1)
            if p < num_frames:
                p += 1
        files.append(row)
    return np.asarray(files)


def reference_mmaction_test(
    total_frames: int, start_index: int, *, clip_len: int, frame_interval: int, num_clips: int
) -> np.ndarray:
    """open-mmlab mmaction2 0.13 SampleFrames(test_mode=True), out_of_bound_opt='loop'."""
    ori_clip_len = clip_len * frame_interval
    avg_interval = (total_frames - ori_clip_len + 1) / float(num_clips)
    if total_frames > ori_clip_len - 1:
        base_offsets = np.arange(num_clips) * avg_interval
        clip_offsets = (base_offsets + avg_interval / 2.0).astype(np.int64)
    else:
        clip_offsets = np.zeros((num_clips,), dtype=np.int64)
    frame_inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    frame_inds = np.mod(frame_inds, total_frames)
    return frame_inds + start_index


def _segment(start: int, stop: int, fps: float = 60.0) -> SegmentFrames:
    return SegmentFrames("P01_01_7", (start - 1) / fps, (stop - 1) / fps, start, stop, fps)


@pytest.mark.parametrize(("start", "stop"), SEGMENTS)
def test_mmsada_test_windows_and_flow_indices_match_the_reference(start, stop):
    recipe = sampling.get("mmsada-test")
    expected = reference_mmsada_test(start, stop)
    np.testing.assert_array_equal(recipe.rgb_numbers(_segment(start, stop)), expected)
    # EPIC-55 flow at half rate: flow_filename(int(no / 2)) for every RGB frame no.
    flow = recipe.flow_numbers(_segment(start, stop), 0.5)
    np.testing.assert_array_equal(flow, np.maximum((expected / 2).astype(int), 1))
    # EPIC-100 flow (stride 1): the same numbers as RGB.
    np.testing.assert_array_equal(recipe.flow_numbers(_segment(start, stop), 1.0), expected)


@pytest.mark.parametrize(("start", "stop"), SEGMENTS)
@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_ta3n_snippets_match_tbn_test_indices(start, stop, ratio):
    recipe = sampling.get("ta3n")
    segment = _segment(start, stop)
    rgb = reference_tbn_test(start, stop, new_length=1, ratio=1.0)
    np.testing.assert_array_equal(recipe.rgb_numbers(segment), rgb)
    flow = reference_tbn_test(start, stop, new_length=5, ratio=ratio)
    np.testing.assert_array_equal(recipe.flow_numbers(segment, ratio), np.maximum(flow, 1))


@pytest.mark.parametrize(("start", "stop"), SEGMENTS)
def test_audio_adaptive_clips_match_mmaction_sample_frames(start, stop):
    recipe = sampling.get("audio-adaptive")
    expected = reference_mmaction_test(
        max(stop - start, 1), start, clip_len=32, frame_interval=2, num_clips=5
    )
    np.testing.assert_array_equal(recipe.rgb_numbers(_segment(start, stop)), expected)


def test_short_segments_are_padded_like_the_references():
    # mmaction2 loops a 20-frame segment: 32 frames at interval 2 wrap around.
    frames = sampling.get("audio-adaptive").rgb_numbers(_segment(2000, 2020))
    assert frames.min() >= 2000 and frames.max() < 2020
    assert list(frames[0, :12]) == [2000 + (2 * i) % 20 for i in range(12)]
    # TBN repeats the last frame of a snippet that reaches the segment's end.
    flow = sampling.get("ta3n").flow_numbers(_segment(50, 54), 1.0)
    assert flow.shape == (25, 5) and np.all(flow == [50, 51, 52, 53, 53])
    # MM-SADA reads frames outside a segment shorter than its 32-frame window.
    window = sampling.get("mmsada-test").rgb_numbers(_segment(2000, 2020))
    assert window.min() < 2000 and window.max() > 2020


def test_random_windows_are_seeded_by_uid_and_stay_in_the_mmsada_range():
    recipe = sampling.get("mmsada-train")
    segment = _segment(1200, 1390)
    first = recipe.rgb_numbers(segment)
    np.testing.assert_array_equal(first, recipe.rgb_numbers(segment))  # resumable
    other = recipe.rgb_numbers(SegmentFrames("other", 20.0, 23.0, 1200, 1390, 60.0))
    assert not np.array_equal(first, other)
    centres = first[:, 8]
    assert first.shape == (10, 16) and np.all((centres >= 1216) & (centres <= 1375))
    rng = np.random.default_rng([0, zlib.crc32(b"P01_01_7")])
    np.testing.assert_array_equal(centres, rng.integers(1216, 1376, size=10))


def test_snippet_audio_windows_are_centred_on_tbn_snippet_frames():
    recipe = sampling.get("ta3n")
    segment = _segment(1200, 1390)
    windows = recipe.audio_windows_of(segment)
    frames = recipe.rgb_numbers(segment)[:, 0]
    centres = np.array([(a + b) / 2 for a, b in windows])
    # TBN: centre = (start_frame + idx) / fps = the start time of the snippet's frame.
    np.testing.assert_allclose(centres, (frames - 1) / 60.0, atol=1e-9)
    assert all(b - a == pytest.approx(1.278) for a, b in windows)


def test_time_based_frames_convert_through_the_segment_anchor():
    # EPIC frames are numbered at 60 fps while the videos run at 59.94: anchored at the segment
    # start, an hour into a video the numbers still match start_frame.
    segment = SegmentFrames("u", 3688.43, 3690.0, 221305, 221399, 59.94)
    assert segment.number_at(np.array([3688.43]))[0] == 221305
    assert segment.anchored(np.array([221305, 221307])) == pytest.approx(
        3688.43 + np.array([0, 2]) / 59.94
    )
    # decoding aims inside the frame: half of what is left of it after start_sec
    fraction = 3688.43 * 59.94 % 1
    assert segment.time_of(np.array([221305])) == pytest.approx(
        3688.43 + (1 - fraction) / 2 / 59.94
    )
    at_start = SegmentFrames.from_seconds("u", 2.0, 3.0, 25.0)  # start_sec on a frame's start
    assert at_start.time_of(np.array([51, 52])) == pytest.approx([2.02, 2.06])
    derived = SegmentFrames.from_seconds("u", 1.0, 2.0, 25.0)
    assert (derived.start_frame, derived.stop_frame) == (26, 51)


def test_v01_recipes_and_provenance_still_compare_equal():
    v01 = {
        "name": "mmsada",
        "num_clips": 5,
        "num_frames": 16,
        "frame_rate": 30.0,
        "resize_shorter": 256,
        "crop_size": 224,
        "audio_windows": "segment",
        "audio_seconds": 10.0,
    }
    assert recipe_differences(v01, sampling.get("mmsada")) == []
    assert Recipe.from_dict(v01) == sampling.get("mmsada")
    changed = recipe_differences({**v01, "num_clips": 3}, sampling.get("mmsada"))
    assert changed == ["recipe.num_clips: store has 3, this run asks for 5"]
    demo = sampling.get("demo")
    times = demo.frame_times(1.0, 3.0)
    np.testing.assert_allclose(times[:, 0], 1.0 + np.array([0.5, 1.5]) - 7.5 / 16)


def test_recipes_express_per_backbone_inputs():
    ta3n = sampling.get("ta3n")
    assert ta3n.clip_frames == {"rgb": 1, "flow": 5} and ta3n.num_audio_windows == 25
    assert sampling.get("audio-adaptive").clip_frames["rgb"] == 32
    assert sampling.get("cia").spatial and not sampling.get("ta3n").spatial
    assert sampling.get("rna-net").audio_cut == "tbn"


def test_invalid_recipes_are_refused_with_the_field():
    with pytest.raises(ConfigError, match="num_clips"):
        Recipe(name="x", num_clips=0, num_frames=8, frame_rate=8, resize_shorter=64, crop_size=32)
    with pytest.raises(ConfigError, match="crop_size 128 is larger"):
        Recipe(name="x", num_clips=1, num_frames=8, frame_rate=8, resize_shorter=64, crop_size=128)
    with pytest.raises(ConfigError, match="placement"):
        Recipe.from_dict({**sampling.get("demo").to_dict(), "placement": "sideways"})


def test_every_recipe_is_documented():
    text = (REPO / "docs" / "extraction.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.MULTILINE))
    assert set(sampling.names()) <= documented, set(sampling.names()) - documented


def test_audio_adaptive_224_is_audio_adaptive_with_mmaction2s_centre_crop_224() -> None:
    """Only the crop differs; ``audio-adaptive`` itself is unchanged (its stores resume)."""
    base, crop = sampling.get("audio-adaptive").to_dict(), sampling.get("audio-adaptive-224")
    changed = {k: v for k, v in crop.to_dict().items() if base[k] != v}
    assert changed == {"name": "audio-adaptive-224", "crop_size": 224, "crop_offset": "floor"}
    assert base["crop_size"] == 256 and base["crop_offset"] == "round"
    old = {k: v for k, v in base.items() if k != "crop_offset"}  # provenance before the field
    assert recipe_differences(old, sampling.get("audio-adaptive")) == []
    frames = np.arange(256 * 455).reshape(1, 256, 455, 1)
    assert centre_crop(frames, 224, "floor")[0, 0, 0, 0] == 16 * 455 + 115  # (455 - 224) // 2
    assert centre_crop(frames, 224)[0, 0, 0, 0] == 16 * 455 + 116  # round(115.5), torchvision
