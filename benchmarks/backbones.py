"""Throughput and peak memory of every backbone's ``forward_features``.

For each registered backbone and modality this measures, side by side:

- ``naive``: float32, batch 1, autograd on (what a straightforward extraction loop does);
- ``fp32``: float32 under ``torch.inference_mode`` at batch sizes 1..32;
- on CUDA also ``bf16-cl``: bfloat16 autocast with channels-last memory format.

It prints one table: clips/s, peak memory and the speed-up over the naive run. Peak memory is
what one call allocates above the weights and the input: ``torch.cuda.max_memory_allocated``
on GPU, the PyTorch profiler's memory timeline on CPU (measured in a separate, untimed call).

    python benchmarks/backbones.py --quick            # CPU, tiny inputs, a few seconds
    python benchmarks/backbones.py --device cuda      # full-size inputs from each input_spec
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avda.devices import resolve_device
from avda.extract import backbones

# Full-size inputs follow each backbone's input_spec; --quick uses the small ones.
FULL: dict[tuple[str, str], list[tuple[int, ...]]] = {
    ("i3d", "rgb"): [(3, 16, 224, 224)],
    ("i3d", "flow"): [(2, 16, 224, 224)],
    ("tbn", "rgb"): [(3, 224, 224)],
    ("tbn", "flow"): [(10, 224, 224)],
    ("tbn", "audio"): [(1, 256, 256)],
    ("slowfast", "rgb"): [(3, 8, 256, 256), (3, 32, 256, 256)],
    ("audio_resnet18", "audio"): [(1, 257, 1004)],
}
QUICK: dict[tuple[str, str], list[tuple[int, ...]]] = {
    ("i3d", "rgb"): [(3, 9, 64, 64)],
    ("i3d", "flow"): [(2, 9, 64, 64)],
    ("tbn", "rgb"): [(3, 64, 64)],
    ("tbn", "flow"): [(10, 64, 64)],
    ("tbn", "audio"): [(1, 64, 64)],
    ("slowfast", "rgb"): [(3, 2, 64, 64), (3, 8, 64, 64)],
    ("audio_resnet18", "audio"): [(1, 257, 100)],
}


@dataclasses.dataclass
class Result:
    backbone: str
    modality: str
    mode: str
    batch: int
    clips_per_second: float
    peak_bytes: int | None


def make_input(shapes: list[tuple[int, ...]], batch: int, device: torch.device) -> Any:
    tensors = [torch.randn(batch, *shape, device=device) for shape in shapes]
    return tensors if len(tensors) > 1 else tensors[0]


def to_channels_last(x: Any) -> Any:
    if isinstance(x, list):
        return [to_channels_last(t) for t in x]
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return x.contiguous(memory_format=fmt)


def peak_memory(call: Callable[[], None], device: torch.device) -> int | None:
    """Peak bytes allocated by one ``call()`` above what was allocated before it.

    CUDA: the allocator's peak statistics. CPU: the PyTorch profiler's memory timeline (the
    CPU allocator keeps no statistics); None if the profiler cannot produce it.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    activities = [torch.profiler.ProfilerActivity.CPU]
    try:
        with torch.profiler.profile(
            activities=activities, profile_memory=True, record_shapes=True, with_stack=True
        ) as profiler:
            call()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "timeline.json"
            profiler.export_memory_timeline(str(path), device="cpu")
            _, sizes = json.loads(path.read_text())  # per time step: bytes per category
    except (RuntimeError, ValueError) as error:
        print(f"memory timeline unavailable: {error}", file=sys.stderr)
        return None
    if not sizes:
        return None
    return max(sum(step) for step in sizes) - sum(sizes[0])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    model: torch.nn.Module,
    x: Any,
    *,
    device: torch.device,
    mode: str,
    iterations: int,
    warmup: int,
) -> tuple[float, int | None]:
    """Seconds per call and peak memory of ``model.forward_features(x)`` in ``mode``."""

    def call() -> None:
        if mode == "naive":
            model.forward_features(x)
            return
        with torch.inference_mode():
            if mode == "bf16-cl":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    model.forward_features(x)
            else:
                model.forward_features(x)

    for _ in range(warmup):
        call()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        call()
    synchronize(device)
    elapsed = (time.perf_counter() - start) / iterations
    return elapsed, peak_memory(call, device)


def benchmark(args: argparse.Namespace) -> list[Result]:
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    batches = [1, 2] if args.quick else [1, 2, 4, 8, 16, 32]
    modes = ["fp32"] + (["bf16-cl"] if device.type == "cuda" else [])
    results: list[Result] = []
    for (name, modality), shapes in sizes.items():
        if args.only and name not in args.only:
            continue
        model = backbones.create(name, modality=modality).to(device).eval()
        seconds, peak = run(
            model,
            make_input(shapes, 1, device),
            device=device,
            mode="naive",
            iterations=args.iterations,
            warmup=args.warmup,
        )
        results.append(Result(name, modality, "naive", 1, 1 / seconds, peak))
        for mode in modes:
            if mode == "bf16-cl":
                fmt = torch.channels_last_3d if len(shapes[0]) == 4 else torch.channels_last
                model = model.to(memory_format=fmt)
            for batch in batches:
                x = make_input(shapes, batch, device)
                if mode == "bf16-cl":
                    x = to_channels_last(x)
                try:
                    seconds, peak = run(
                        model,
                        x,
                        device=device,
                        mode=mode,
                        iterations=args.iterations,
                        warmup=args.warmup,
                    )
                except torch.OutOfMemoryError:
                    print(f"{name} {modality} {mode} batch {batch}: out of memory", file=sys.stderr)
                    break
                results.append(Result(name, modality, mode, batch, batch / seconds, peak))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def format_table(results: list[Result]) -> str:
    naive = {(r.backbone, r.modality): r.clips_per_second for r in results if r.mode == "naive"}
    header = f"{'backbone':<15} {'modality':<8} {'mode':<8} {'batch':>5} {'clips/s':>10} "
    header += f"{'peak MiB':>9} {'x naive':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.0f}"
        ratio = r.clips_per_second / naive[(r.backbone, r.modality)]
        lines.append(
            f"{r.backbone:<15} {r.modality:<8} {r.mode:<8} {r.batch:>5} "
            f"{r.clips_per_second:>10.2f} {peak:>9} {ratio:>8.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=resolve_device(None))
    parser.add_argument("--quick", action="store_true", help="tiny inputs, batch 1 and 2")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--only", nargs="*", help="backbone names to run (default: all)")
    args = parser.parse_args()
    if args.iterations is None:
        args.iterations = 2 if args.quick else 10
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = benchmark(args)
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"iterations={args.iterations}"
    )
    print(format_table(results))


if __name__ == "__main__":
    main()
