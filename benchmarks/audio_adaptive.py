"""Audio-adaptive micro-benchmarks (issue 19), side by side in one process.

1. The transformers read only the class token of their last layer: one training forward and
   backward of the full last layer against ``queries=1`` (the last layer's attention and MLP for
   token 0 only), at the default shapes of stage 5's psi (16 segments, 1 + 25 audio tokens,
   depth 8) and of stage 6b's recognizers (8 segments, depth 3; rgb 1 + 25 tokens, flow 25 + 25).
   The two are interleaved repetition by repetition, so the machine's load hits both alike.
2. The loop's checkpoint of the head at the EPIC-100 defaults (97 verbs, 25 x 1024 per
   modality): the whole head against the head without its ``stored_submodules`` (the frozen
   audio classifier and encoders, kept in ``RUN/stages``), bytes and seconds per save.

    python benchmarks/audio_adaptive.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from avda import runs
from avda.train import heads
from avda.train.audio_adaptive.transformer import TransformerEncoder
from avda.train.data import Task

SHAPES = {
    "stage 5 psi (16 segments, 26 tokens, depth 8)": (8, 16, 26),
    "stage 6b rgb recognizer (8 segments, 26 tokens, depth 3)": (3, 8, 26),
    "stage 6b flow recognizer (8 segments, 50 tokens, depth 3)": (3, 8, 50),
}


def transformer_seconds(depth: int, batch: int, tokens: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    encoder = TransformerEncoder(256, depth=depth, heads=8, head_dim=64, mlp_dim=512, dropout=0.15)
    encoder.train()
    x = torch.randn(batch, tokens, 256, requires_grad=True)
    seconds = {"full": 0.0, "class token": 0.0}
    for repeat in range(repeats + 1):
        for name, queries in (("full", None), ("class token", 1)):
            began = time.perf_counter()
            out = encoder(x, queries=queries)[:, 0]
            out.sum().backward()
            if repeat:  # the first repetition warms up
                seconds[name] += time.perf_counter() - began
    return {k: v / repeats for k, v in seconds.items()}


def checkpoint_costs(repeats: int) -> dict[str, tuple[float, float]]:
    inputs = {m: (25, 1024) for m in ("rgb", "flow", "audio")}
    head = heads.create("audio-adaptive", inputs=inputs, tasks=[Task("verb", 97)])
    whole = head.state_dict()
    stored = head.stored_submodules
    trainable = {k: v for k, v in whole.items() if k.split(".")[0] not in stored}
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, state in (("whole head", whole), ("without stored submodules", trainable)):
            path = Path(folder) / "last.pt"
            began = time.perf_counter()
            for _ in range(repeats):
                runs.save_checkpoint({"model": state}, path)
            out[name] = (os.path.getsize(path) / 1e6, (time.perf_counter() - began) / repeats)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpu x{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print("| transformer, forward + backward (training) | full (ms) | class token (ms) | ratio |")
    print("|---|---:|---:|---:|")
    for label, (depth, batch, tokens) in SHAPES.items():
        s = transformer_seconds(depth, batch, tokens, args.repeats)
        full, kept = s["full"], s["class token"]
        print(f"| {label} | {full * 1e3:.1f} | {kept * 1e3:.1f} | {kept / full:.2f} |")
    print()
    print("| checkpoint of the head | MB | seconds per save |")
    print("|---|---:|---:|")
    for label, (size, seconds) in checkpoint_costs(max(1, args.repeats // 2)).items():
        print(f"| {label} | {size:.1f} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
