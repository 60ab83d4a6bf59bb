"""Compute golden outputs of the *reference* implementations for tests/extract/data/*.pt.

The reference code is never imported by avda or by the test suite; only this script runs it,
outside the repository's environment. It needs, on ``--reference-path``:

- ``pytorchvideo`` 0.1.5 (SlowFast R50: ``pytorchvideo.models.hub.slowfast_r50``) with its
  dependencies ``fvcore`` and ``iopath``;
- ``pytorch_i3d.py`` of piergiaj/pytorch-i3d at commit 05783d11 (I3D; not on PyPI: copy the
  file from a clone. The copy vendored by cd-fvd 0.1.1 is modified: BN eps 1e-5, so it is not
  a faithful reference);
- ``pretrainedmodels`` (Cadene), whose ``models/bninception.py`` is the TSN BN-Inception with
  the same Caffe layer names (TBN streams; conv1 swapped for flow/audio as TBN does);
- torchvision (already in the repository's venv) for the VGGSound ResNet-18.

Set up once, in a throwaway folder (never in the repository)::

    python -m pip install --target /tmp/avda-reference --no-deps pytorchvideo==0.1.5 \
        fvcore iopath yacs tabulate termcolor portalocker pretrainedmodels
    git clone https://github.com/piergiaj/pytorch-i3d /tmp/pytorch-i3d
    git -C /tmp/pytorch-i3d checkout 05783d11
    cp /tmp/pytorch-i3d/pytorch_i3d.py /tmp/avda-reference/
    python tests/extract/make_reference_values.py --reference-path /tmp/avda-reference

Weights follow :func:`seeded_state_dict`, a recipe keyed by parameter name, and inputs follow
:func:`seeded_input`; the test applies the same recipe to avda's models (which have the same
key names) and compares outputs. Each output file stays well below 200 KB.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import zlib
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

DATA = Path(__file__).resolve().parent / "data"

# name -> (backbone, modality, input shapes, what is compared)
CASES: dict[str, dict] = {
    "i3d_rgb": {"backbone": "i3d", "modality": "rgb", "inputs": [(1, 3, 9, 193, 193)]},
    "i3d_flow": {"backbone": "i3d", "modality": "flow", "inputs": [(1, 2, 9, 64, 64)]},
    "tbn_rgb": {"backbone": "tbn", "modality": "rgb", "inputs": [(1, 3, 224, 224)]},
    "tbn_flow": {"backbone": "tbn", "modality": "flow", "inputs": [(1, 10, 224, 224)]},
    "tbn_audio": {"backbone": "tbn", "modality": "audio", "inputs": [(1, 1, 256, 256)]},
    "slowfast_rgb": {
        "backbone": "slowfast",
        "modality": "rgb",
        "inputs": [(1, 3, 8, 64, 64), (1, 3, 32, 64, 64)],
    },
    "audio_resnet18_audio": {
        "backbone": "audio_resnet18",
        "modality": "audio",
        "inputs": [(1, 1, 257, 200)],
    },
}


def seeded_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Deterministic weights by key name: He-scaled conv/linear weights, BN near identity.

    Every tensor gets its own generator seeded with ``crc32(key)``, so the values depend only
    on the key and shape, not on the order or the implementation.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float32)
        if key.endswith("running_var"):
            tensor = 0.75 + 0.5 * torch.rand(value.shape, generator=generator)
        elif key.endswith("running_mean") or key.endswith("bias"):
            tensor = 0.1 * noise
        elif value.dim() == 1:  # BN gamma
            tensor = 1.0 + 0.1 * noise
        else:
            fan_in = value[0].numel()
            tensor = noise * (2.0 / fan_in) ** 0.5
        out[key] = tensor.to(value.dtype)
    return out


def seeded_input(shape: tuple[int, ...], index: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + index)
    return torch.randn(shape, generator=generator)


def _module_from_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(model: nn.Module) -> nn.Module:
    model.load_state_dict(seeded_state_dict(model.state_dict()))
    return model.eval()


def reference_i3d(root: Path, modality: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    module = _module_from_file("pytorch_i3d", root / "pytorch_i3d.py")
    model = _load(module.InceptionI3d(400, in_channels=x.shape[1]))
    spatial = x
    for name in model.VALID_ENDPOINTS:
        spatial = model._modules[name](spatial)
        if name == "Mixed_5c":
            break
    out = {"spatial_mean": spatial.mean(dim=(3, 4))}  # (B, 1024, T')
    if spatial.shape[-1] >= 7:
        out["features"] = model.avg_pool(spatial).mean(dim=(2, 3, 4))
        logits = model(x)  # piergiaj returns (B, C, T'), squeezed to (B, C) when T' = 1
        out["logits"] = logits.mean(dim=2) if logits.dim() == 3 else logits
    return out


def reference_tbn(root: Path, modality: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    module = _module_from_file("bninception", root / "pretrainedmodels/models/bninception.py")
    model = module.BNInception(num_classes=1000)
    if modality != "rgb":  # TBN replaces the first conv for 10-channel flow / 1-channel spec
        model.conv1_7x7_s2 = nn.Conv2d(x.shape[1], 64, kernel_size=7, stride=2, padding=3)
    if modality == "audio":  # and the spec stream's final pool
        model.global_pool = nn.AvgPool2d(8, stride=1, padding=0)
    _load(model)
    spatial = model.features(x)
    return {
        "spatial_subsampled": spatial[:, :, ::3, ::3],
        "features": model.global_pool(spatial).flatten(1),
    }


def reference_slowfast(root: Path, slow: torch.Tensor, fast: torch.Tensor) -> dict:
    sys.path.insert(0, str(root))
    from pytorchvideo.models.hub import slowfast_r50

    model = _load(slowfast_r50(pretrained=False))
    pathways = [slow, fast]
    for block in model.blocks[:5]:
        pathways = block(pathways)
    return {
        "slow_spatial_mean": pathways[0].mean(dim=(3, 4)),  # (B, 2048, 8)
        "fast_spatial_mean": pathways[1].mean(dim=(3, 4)),  # (B, 256, 32)
        "features": torch.cat([p.mean(dim=(2, 3, 4)) for p in pathways], dim=1),
    }


def reference_audio(x: torch.Tensor) -> dict[str, torch.Tensor]:
    from torchvision.models import resnet18

    model = resnet18(num_classes=309)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    _load(model)
    trunk = nn.Sequential(*list(model.children())[:-2])
    spatial = trunk(x)
    return {
        "spatial_mean": spatial.mean(dim=3),
        "features": torch.flatten(model.avgpool(spatial), 1),
        "logits": model(x),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-path", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    for name, case in CASES.items():
        inputs = [seeded_input(shape, index) for index, shape in enumerate(case["inputs"])]
        if case["backbone"] == "i3d":
            outputs = reference_i3d(args.reference_path, case["modality"], inputs[0])
            source = "piergiaj/pytorch-i3d pytorch_i3d.py @05783d11"
        elif case["backbone"] == "tbn":
            outputs = reference_tbn(args.reference_path, case["modality"], inputs[0])
            source = "Cadene pretrainedmodels BNInception (TSN Caffe graph)"
        elif case["backbone"] == "slowfast":
            outputs = reference_slowfast(args.reference_path, *inputs)
            source = "pytorchvideo 0.1.5 slowfast_r50"
        else:
            outputs = reference_audio(inputs[0])
            source = "torchvision resnet18 with a 1-channel conv1 (VGGSound model H)"
        record = {
            "backbone": case["backbone"],
            "modality": case["modality"],
            "input_shapes": case["inputs"],
            "input_sums": [float(x.double().sum()) for x in inputs],
            "source": source,
            "torch": str(torch.__version__),
            "outputs": {key: value.contiguous().clone() for key, value in outputs.items()},
        }
        path = args.out / f"reference_{name}.pt"
        torch.save(record, path)
        print(f"{path}: {', '.join(f'{k} {list(v.shape)}' for k, v in outputs.items())}")


if __name__ == "__main__":
    main()
