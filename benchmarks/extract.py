"""Extraction throughput, side by side on the same videos and weights, and memory vs dataset size.

Rows of the clips/s table (same manifest, recipe, backbone and random-init weights):

- ``avda``: ``avda.extract.runner.extract`` — decoding workers overlapped with inference, only
  the sampled frames decoded, resize in the decoder, clips of several segments batched, BN
  folded, channels-last, writes on a background thread; once in float32 and once at its
  default precision (``auto``: bfloat16 where the device computes in it natively) when that
  differs;
- ``naive``: what a first extraction script does: for every clip open the video, decode its
  frames at full resolution, resize and crop them, run the backbone at batch 1 in float32;
  for I3D with pytorch-i3d's forward pass (:func:`reference_style_i3d`: same weights, same
  function, as the common scripts run it);
- ``decode only``: decord decoding of the sampled frames alone, resized in the decoder — the
  ceiling of any extractor that reads these videos.

Then the peak resident memory of ``avda extract`` for 100 and 1000 segments (a small clip
configuration, so that 1000 segments take seconds): memory must not grow with the dataset.

    python benchmarks/extract.py --quick          # a few segments, tens of seconds on a CPU
    python benchmarks/extract.py                  # the mmsada recipe on 24 segments
    python benchmarks/extract.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avda.devices import resolve_device

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("AVDA_SHARED_DATA", REPO.parent / "shared" / "data")) / "media"
VIDEOS = ("v_ZNVhz7ctTq0.mp4", "v_GGSY1Qvo990.mp4", "test.avi", "bigbuckbunny.mp4")


def make_manifest(videos: Path, count: int, length: float = 2.0) -> pd.DataFrame:
    """``count`` segments of ``length`` s spread over the real test videos (copied to
    ``videos``)."""
    import decord

    durations = {}
    for name in VIDEOS:
        shutil.copy(MEDIA / "video" / name, videos / name)
        reader = decord.VideoReader(str(videos / name))
        durations[name] = len(reader) / max(reader.get_avg_fps(), 1.0)
    rows = []
    for i in range(count):
        name = VIDEOS[i % len(VIDEOS)]
        span = max(durations[name] - length, 0.1)
        start = (i // len(VIDEOS)) * 0.37 % span
        rows.append(
            {
                "uid": f"seg{i:05d}",
                "video_id": Path(name).stem,
                "video_path": name,
                "domain": "bench",
                "split": "test",
                "start_sec": round(start, 3),
                "stop_sec": round(start + length, 3),
            }
        )
    return pd.DataFrame(rows)


def run_avda(manifest, videos, recipe, backbone, device, workers, precision, batch_size) -> float:
    from avda.extract import runner

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        result = runner.extract(
            manifest,
            videos=videos,
            out=Path(tmp) / "bench.zarr",
            recipe=recipe,
            modalities=[runner.ModalitySpec("rgb", backbone)],
            workers=workers,
            device=device,
            batch_size=batch_size,
            precision=precision,
            progress=False,
        )
        seconds = time.perf_counter() - began
        if not result.ok:
            raise SystemExit(f"avda extraction failed: {result.failures.head()}")
    return seconds


def reference_style_i3d(model):
    """``model`` running pytorch-i3d's forward pass (piergiaj/pytorch-i3d, the I3D of the
    common extraction scripts): every conv and max-pool pads its input to TF "SAME" with
    ``F.pad`` and then runs VALID; BatchNorm and ReLU are separate ops. Same weights, same
    function as avda's I3D (checked below), none of avda's changes to the module."""
    from types import MethodType

    import torch.nn.functional as F

    from avda.extract.backbones import i3d

    def unit_forward(self, x):
        x = F.pad(x, same_pads(x, self.kernel, self.stride))
        x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride)
        x = self.bn(x) if self.bn is not None else x
        return F.relu(x) if self.activation else x

    def pool_forward(self, x):
        x = F.pad(x, same_pads(x, self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)

    def same_pads(x, kernel, stride):
        pads = []
        for size, k, s in zip(
            reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True
        ):
            pads.extend(i3d.same_padding(size, k, s))
        return pads

    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, i3d.Unit3D):
            module.forward = MethodType(unit_forward, module)
        elif isinstance(module, i3d.MaxPool3dSame):
            module.forward = MethodType(pool_forward, module)
    x = torch.rand(2, model.config.in_channels, 16, 64, 64) * 2 - 1
    with torch.no_grad():
        error = (reference.forward_features(x) - model.forward_features(x)).abs().max()
    assert error < 1e-4, f"reference-style I3D differs from avda's: {error}"
    return reference


def run_naive(manifest, videos, recipe, backbone, device) -> float:
    """Open the video for every clip, decode full frames, resize, crop, forward at batch 1."""
    import decord

    from avda.extract import runner
    from avda.extract.sampling import SegmentFrames
    from avda.extract.transforms import model_input

    model = runner._build_model(runner.ModalitySpec("rgb", backbone), recipe).to(device)
    if backbone == "i3d":
        model = reference_style_i3d(model)
    spec = model.input_spec
    began = time.perf_counter()
    for row in manifest.itertuples(index=False):
        reader = decord.VideoReader(str(videos / row.video_path))
        fps = reader.get_avg_fps()
        segment = SegmentFrames.from_seconds(row.uid, row.start_sec, row.stop_sec, fps)
        plan = recipe.rgb_plan(segment)
        times = plan.times if plan.times is not None else segment.time_of(plan.numbers)
        for clip_times in times:
            reader = decord.VideoReader(str(videos / row.video_path))  # every clip reopens
            stamps = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0]
            index = np.clip(
                np.searchsorted(stamps, clip_times + 1e-6, side="right") - 1, 0, len(reader) - 1
            )
            frames = torch.from_numpy(reader.get_batch(index.tolist()).asnumpy())
            x = frames.permute(0, 3, 1, 2).float()  # (T, H, W, 3) -> (T, 3, H, W)
            height, width = x.shape[-2:]
            scale = recipe.resize_shorter / min(height, width)
            x = torch.nn.functional.interpolate(
                x, size=(round(height * scale), round(width * scale)), mode="bilinear"
            )
            top = (x.shape[-2] - recipe.crop_size) // 2
            left = (x.shape[-1] - recipe.crop_size) // 2
            x = x[..., top : top + recipe.crop_size, left : left + recipe.crop_size]
            clip = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)[None]
            batch = model_input(clip.to(device), spec)  # (1, C, T, H, W), float32
            with torch.no_grad():
                model.forward_features(batch)  # batch 1, float32
    return time.perf_counter() - began


def run_decode_only(manifest, videos, recipe) -> float:
    from avda.extract.decode import VideoDecoder
    from avda.extract.sampling import SegmentFrames

    began = time.perf_counter()
    decoders: dict[str, VideoDecoder] = {}
    for row in manifest.itertuples(index=False):
        if row.video_path not in decoders:
            decoders.clear()
            decoders[row.video_path] = VideoDecoder(
                videos / row.video_path, shorter_side=recipe.resize_shorter
            )
        decoder = decoders[row.video_path]
        segment = SegmentFrames.from_seconds(row.uid, row.start_sec, row.stop_sec, decoder.fps)
        plan = recipe.rgb_plan(segment)
        times = plan.times if plan.times is not None else segment.time_of(plan.numbers)
        decoder.frames(decoder.indices_at(times.reshape(-1)))
    return time.perf_counter() - began


# --------------------------------------------------------------------------- memory
def rss_child(count: int, workers: int) -> None:
    """(subprocess) extract ``count`` segments with a small configuration; print peak RSS."""
    from avda.extract import runner, sampling

    recipe = sampling.Recipe(
        name="rss", num_clips=2, num_frames=8, frame_rate=8.0, resize_shorter=64, crop_size=32
    )
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos"
        videos.mkdir()
        manifest = make_manifest(videos, count, length=1.0)
        runner.extract(
            manifest,
            videos=videos,
            out=Path(tmp) / "rss.zarr",
            recipe=recipe,
            modalities=[runner.ModalitySpec("rgb", "i3d")],
            workers=workers,
            chunk_rows=64,
            progress=False,
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"main_peak_mib": peak}))


def measure_rss(count: int, workers: int) -> dict[str, float]:
    import psutil

    command = [sys.executable, __file__, "--rss-child", str(count), "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    parent, tree_peak, main_peak = psutil.Process(process.pid), 0.0, 0.0
    began = time.perf_counter()
    while process.poll() is None:
        try:
            main = parent.memory_info().rss / 2**20
            members = parent.children(recursive=True)
            main_peak = max(main_peak, main)
            tree_peak = max(tree_peak, main + sum(p.memory_info().rss for p in members) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.1)
    output = process.stdout.read().decode().strip().splitlines()
    result = json.loads(output[-1]) if output else {"main_peak_mib": float("nan")}
    # Linux keeps ru_maxrss across execve: the child's own figure can be this (large) process's
    # peak at the fork. Sampled RSS of the child is what it used.
    result["main_peak_mib"] = main_peak
    result["tree_peak_mib"] = tree_peak
    result["seconds"] = time.perf_counter() - began
    return result


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few segments, small crops")
    parser.add_argument("--segments", type=int, default=None)
    parser.add_argument("--recipe", default=None, help="default: mmsada (--quick: demo)")
    parser.add_argument("--backbone", default="i3d")
    parser.add_argument("--device", default=resolve_device(None))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-rss", action="store_true", help="skip the memory measurement")
    parser.add_argument("--rss-segments", default="100,1000")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child, args.workers)
        return

    from avda.extract import sampling
    from avda.extract.inference import resolve_precision

    count = args.segments or (6 if args.quick else 24)
    recipe = sampling.get(args.recipe or ("demo" if args.quick else "mmsada"))
    clips = count * recipe.num_clips
    print(
        f"# {count} segments x {recipe.num_clips} clips ({recipe.name}: {recipe.num_frames} "
        f"frames, crop {recipe.crop_size}), {args.backbone} rgb, random init, "
        f"device {args.device}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, {args.workers} decoding workers\n"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp)
        manifest = make_manifest(videos, count)
        seconds = run_decode_only(manifest, videos, recipe)
        rows.append(("decode only (decord, ceiling)", seconds))
        # Before any avda run: avda's process-wide allocator setting must not help the naive loop.
        seconds = run_naive(manifest, videos, recipe, args.backbone, args.device)
        rows.append(("naive (per clip, batch 1, float32)", seconds))
        run_avda(manifest.iloc[:1], videos, recipe, args.backbone, args.device, 0, "auto", 16)
        precisions = ["float32"]
        if resolve_precision("auto", args.device) != "float32":
            precisions.append("auto")
        for precision in precisions:
            seconds = run_avda(
                manifest,
                videos,
                recipe,
                args.backbone,
                args.device,
                args.workers,
                precision,
                args.batch_size,
            )
            name = resolve_precision(precision, args.device)
            rows.append(
                (f"avda {name}" + (" (default: auto)" if precision == "auto" else ""), seconds)
            )
    naive = dict(rows)["naive (per clip, batch 1, float32)"]
    print("| run | clips | seconds | clips/s | vs naive |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in rows:
        print(
            f"| {name} | {clips} | {seconds:.1f} | {clips / seconds:.2f} | {naive / seconds:.2f}x |"
        )
    if args.no_rss:
        return
    print("\n| segments | peak RSS main process (MiB) | peak RSS incl. workers (MiB) | seconds |")
    print("|---:|---:|---:|---:|")
    for text in args.rss_segments.split(","):
        result = measure_rss(int(text), args.workers)
        print(
            f"| {int(text)} | {result['main_peak_mib']:.0f} | {result['tree_peak_mib']:.0f} | "
            f"{result['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
