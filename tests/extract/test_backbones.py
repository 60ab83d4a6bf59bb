"""Backbones: interface over every registered name, checkpoint layouts, parity, errors.

Synthetic checkpoints are built from the key manifests in ``shared/data/checkpoint_keys`` with
the exact published wrapping (no weights can be downloaded here). Golden outputs of the
reference implementations are in ``tests/extract/data`` (see ``make_reference_values.py``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avda.cache import Status
from avda.errors import CheckpointError, ConfigError, UnknownNameError
from avda.extract import backbones
from avda.extract.backbones import audio_resnet, i3d, slowfast, tbn
from avda.extract.backbones._base import MODALITIES, Backbone
from avda.extract.backbones.weights import advising, read_checkpoint

HERE = Path(__file__).resolve().parent
REFERENCE_FILES = sorted((HERE / "data").glob("reference_*.pt"))

# Tiny inputs per (backbone, modality) and the expected forward_spatial shapes.
TINY: dict[tuple[str, str], tuple[list[tuple[int, ...]], list[tuple[int, ...]]]] = {
    ("i3d", "rgb"): ([(2, 3, 9, 32, 32)], [(2, 1024, 2, 1, 1)]),
    ("i3d", "flow"): ([(2, 2, 9, 32, 32)], [(2, 1024, 2, 1, 1)]),
    ("tbn", "rgb"): ([(2, 3, 32, 32)], [(2, 1024, 1, 1)]),
    ("tbn", "flow"): ([(2, 10, 32, 32)], [(2, 1024, 1, 1)]),
    ("tbn", "audio"): ([(2, 1, 32, 32)], [(2, 1024, 1, 1)]),
    ("slowfast", "rgb"): (
        [(2, 3, 2, 32, 32), (2, 3, 8, 32, 32)],
        [(2, 2048, 2, 1, 1), (2, 256, 8, 1, 1)],
    ),
    ("audio_resnet18", "audio"): ([(2, 1, 32, 32)], [(2, 512, 1, 1)]),
    ("slowfast-r50-mmaction", "rgb"): (
        [(2, 3, 8, 32, 32)],
        [(2, 2048, 2, 1, 1), (2, 256, 8, 1, 1)],
    ),
    ("slowfast-r101-mmaction", "rgb"): (
        [(2, 3, 8, 32, 32)],
        [(2, 2048, 2, 1, 1), (2, 256, 8, 1, 1)],
    ),
    ("slowfast-r50-mmaction-max", "rgb"): (
        [(2, 3, 8, 32, 32)],
        [(2, 2048, 2, 1, 1), (2, 256, 8, 1, 1)],
    ),
    ("slowfast-r101-mmaction-max", "rgb"): (
        [(2, 3, 8, 32, 32)],
        [(2, 2048, 2, 1, 1), (2, 256, 8, 1, 1)],
    ),
}
MODULES = {"i3d": i3d, "tbn": tbn, "slowfast": slowfast, "audio_resnet18": audio_resnet}


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: on a small shared CPU, thread oversubscription costs 10x or more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_input(name: str, modality: str, *, seed: int = 0) -> Any:
    generator = torch.Generator().manual_seed(seed)
    shapes = TINY[(name, modality)][0]
    tensors = [torch.randn(shape, generator=generator) for shape in shapes]
    return tensors if name == "slowfast" else tensors[0]


def build(name: str, modality: str, **config: Any) -> Backbone:
    return backbones.create(name, modality=modality, **config)


# ---------------------------------------------------------------------------------------------
# Interface, generated over the registry


def test_every_registered_backbone_has_tiny_cases() -> None:
    assert set(backbones.names()) == {
        "i3d",
        "tbn",
        "slowfast",
        "audio_resnet18",
        "slowfast-r50-mmaction",
        "slowfast-r101-mmaction",
        "slowfast-r50-mmaction-max",
        "slowfast-r101-mmaction-max",
    }
    assert {name for name, _ in TINY} == set(backbones.names())


UNSUPPORTED = [
    (name, modality)
    for name in backbones.names()
    for modality in MODALITIES
    if (name, modality) not in TINY
]


@pytest.mark.parametrize(("name", "modality"), UNSUPPORTED)
def test_unsupported_modality_fails_with_choices(name: str, modality: str) -> None:
    with pytest.raises(ConfigError, match="modalit"):
        build(name, modality)


@pytest.mark.parametrize(("name", "modality"), sorted(TINY))
def test_forward_shapes(name: str, modality: str) -> None:
    model = build(name, modality)
    assert model.modality == modality
    assert model.input_spec.modality == modality
    x = tiny_input(name, modality)
    original = list(x) if isinstance(x, list) else None
    with torch.no_grad():
        features = model.forward_features(x)
        spatial = model.forward_spatial(x)
        output = model(x)
    assert features.shape == (2, model.num_features)
    spatial = spatial if isinstance(spatial, list) else [spatial]
    assert [tuple(s.shape) for s in spatial] == TINY[(name, modality)][1]
    assert output.shape[0] == 2 and torch.isfinite(output).all()
    if original is not None:  # slowfast must not modify the caller's [slow, fast] list
        assert len(x) == 2 and all(a is b for a, b in zip(x, original, strict=True))


@pytest.mark.parametrize(("name", "modality"), sorted(TINY))
def test_backward_reaches_every_parameter(name: str, modality: str) -> None:
    model = build(name, modality).train()
    model(tiny_input(name, modality)).sum().backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize(("name", "modality"), sorted(TINY))
def test_folding_batch_norm_keeps_the_function(name: str, modality: str) -> None:
    """Every BatchNorm is declared with the conv it follows: folding all of them (with random
    statistics, so a wrong pairing shows) leaves the features and maps unchanged."""
    model = build(name, modality).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                size = layer.num_features
                layer.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(size, generator=generator))
                layer.weight.copy_(0.5 + torch.rand(size, generator=generator))
                layer.bias.copy_(0.1 * torch.randn(size, generator=generator))
    x = tiny_input(name, modality)
    with torch.no_grad():
        before = model.forward_features(x), model.forward_spatial(x)
        assert backbones.fold_batch_norm_(model) > 0
        after = model.forward_features(x), model.forward_spatial(x)
    left = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    assert not left, f"BatchNorm layers without a declared conv: {left[:5]}"
    assert backbones.fold_batch_norm_(model) == 0  # idempotent
    for a, b in zip(before, after, strict=True):
        for u, v in zip(*[t if isinstance(t, list) else [t] for t in (a, b)], strict=True):
            torch.testing.assert_close(v, u, rtol=1e-4, atol=1e-4 * float(u.abs().max()))
    with pytest.raises(RuntimeError, match="eval mode"):
        backbones.fold_batch_norm_(build(name, modality).train())


def test_unknown_name_and_keyword_list_valid_choices() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'i3d'\?.*valid: audio_resnet18"):
        backbones.create("i3dd", modality="rgb")
    with pytest.raises(ConfigError, match=r"num_class.*valid: .*num_classes"):
        backbones.create("i3d", modality="rgb", num_class=10)
    with pytest.raises(ConfigError, match="valid: audio, flow, rgb"):
        backbones.create("i3d", modality="depth")


def test_wrong_input_shape_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"\(B, 3, T, H, W\)"):
        build("i3d", "rgb").forward_features(torch.zeros(1, 2, 9, 32, 32))
    with pytest.raises(ConfigError, match="fast frames = 4 x slow"):
        build("slowfast", "rgb").forward_features(
            [torch.zeros(1, 3, 2, 32, 32), torch.zeros(1, 3, 2, 32, 32)]
        )
    with pytest.raises(ConfigError, match="multiples of 32"):
        build("tbn", "rgb").forward_features(torch.zeros(1, 3, 200, 200))


@pytest.mark.parametrize("name", ["i3d", "tbn", "slowfast", "audio_resnet18"])
def test_published_weights_and_input_specs_are_complete(name: str, shared_data: Path) -> None:
    module = MODULES[name]
    assert module.PUBLISHED
    for entry in module.PUBLISHED:
        for field in ("name", "file_name", "source", "licence", "modality", "layout", "wrapping"):
            assert getattr(entry, field), f"{entry.name}: {field} is empty"
        assert (shared_data / "checkpoint_keys" / entry.manifest).is_file(), entry.manifest
        model = build(name, entry.modality, **entry.config)
        layout_names = {layout.name for layout in _layouts(name, entry.modality)}
        assert entry.layout in layout_names
        spec = model.input_spec
        if entry.modality == "audio":
            assert spec.sample_rate and spec.clip_seconds and spec.spectrogram
        else:
            assert spec.num_frames and spec.size and spec.resize_shorter and spec.value_range
            assert spec.channel_order in ("RGB", "BGR", "uv")
            assert len(spec.mean) == len(spec.std) == _channels(name, entry.modality)


def _channels(name: str, modality: str) -> int:
    return TINY[(name, modality)][0][0][1]


def _layouts(name: str, modality: str):
    if name == "tbn":
        return tbn.layouts(modality, has_classifier=False)
    return MODULES[name].LAYOUTS


# ---------------------------------------------------------------------------------------------
# Synthetic checkpoints from every manifest, in the published wrapping


def manifest_tensors(path: Path, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the manifest's keys, shapes and dtypes (BN variances positive)."""
    keys = json.loads(path.read_text())["keys"]
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, info in keys.items():
        dtype = getattr(torch, info["dtype"])
        if not dtype.is_floating_point:
            out[key] = torch.zeros(info["shape"], dtype=dtype)
        elif "running_var" in key or "moving_variance" in key:
            out[key] = 0.5 + torch.rand(info["shape"], generator=generator)
        else:
            out[key] = 0.05 * torch.randn(info["shape"], generator=generator)
    return out


def _plain(state: dict[str, torch.Tensor]) -> Any:
    return state


def _tbn_wrapping(best: Any) -> Callable[[dict[str, torch.Tensor]], Any]:
    def wrap(state: dict[str, torch.Tensor]) -> Any:
        return {
            "epoch": 80,
            "arch": "BNInception",
            "state_dict": {"module." + k: v for k, v in state.items()},
            "best_prec1": best,
        }

    return wrap


def _bn_leading_one(state: dict[str, torch.Tensor]) -> Any:
    """The TSN ImageNet file stores BN parameters as [1, C]."""
    return {k: v.unsqueeze(0) if "_bn." in k and v.dim() == 1 else v for k, v in state.items()}


def _numpy_arrays(state: dict[str, torch.Tensor]) -> Any:
    """TF variables dumped as numpy arrays into a torch file."""
    return {k: v.numpy() for k, v in state.items()}


def _model_state(state: dict[str, torch.Tensor]) -> Any:
    return {"epoch": 196, "model_state": state, "optimizer_state": {}, "cfg": "MODEL: {}"}


def _vggsound(state: dict[str, torch.Tensor]) -> Any:
    return {"epoch": 30, "model_state_dict": state}


# manifest -> [(backbone, modality, builder keywords, wrapping, file suffix)]
LOADABLE: dict[str, list[tuple[str, str, dict, Callable, str]]] = {
    "i3d_piergiaj_rgb.json": [("i3d", "rgb", {}, _plain, ".pt")],
    "i3d_piergiaj_flow.json": [("i3d", "flow", {}, _plain, ".pt")],
    "i3d_hassony2_rgb.json": [("i3d", "rgb", {}, _plain, ".pth")],
    "i3d_hassony2_flow.json": [("i3d", "flow", {}, _plain, ".pth")],
    "i3d_tf_deepmind_rgb_imagenet.json": [("i3d", "rgb", {}, _plain, ".npz")],
    "i3d_tf_deepmind_rgb_scratch.json": [("i3d", "rgb", {}, _plain, ".pt")],
    "i3d_tf_deepmind_flow_imagenet.json": [("i3d", "flow", {}, _plain, ".npz")],
    "i3d_tf_deepmind_flow_scratch.json": [("i3d", "flow", {}, _numpy_arrays, ".pt")],
    "i3d_tf_deepmind_rgb_scratch_kin600.json": [
        ("i3d", "rgb", {"num_classes": 600}, _plain, ".npz")
    ],
    "tbn_epic55_rgb_flow_spec_concat.json": [
        ("tbn", modality, {}, _tbn_wrapping(np.float64(31.4)), ".pth")
        for modality in ("rgb", "flow", "audio")
    ],
    "tbn_epic100_rgb_flow_spec_concat.json": [
        ("tbn", modality, {}, _tbn_wrapping(41.2), ".pth") for modality in ("rgb", "flow", "audio")
    ],
    "bninception_imagenet_tsn.json": [
        ("tbn", "rgb", {"num_classes": 1000}, _bn_leading_one, ".pth"),
        ("tbn", "rgb", {}, _bn_leading_one, ".pth"),
    ],
    "slowfast_r50_8x8_pytorchvideo.json": [("slowfast", "rgb", {}, _model_state, ".pyth")],
    "slowfast_r50_8x8_pyslowfast.json": [("slowfast", "rgb", {}, _model_state, ".pyth")],
    "vggsound_resnet18_avgpool_H.json": [("audio_resnet18", "audio", {}, _vggsound, ".pth.tar")],
}
# Manifests that are not checkpoints of a backbone here, and why.
NOT_LOADABLE: dict[str, str] = {
    "INDEX.json": "index of the manifests",
    "i3d_key_mapping.json": "rename table (test_i3d_key_maps_match_the_published_tables)",
    "slowfast_key_mapping.json": "rename table (test_pyslowfast_rename_matches_published_table)",
    "slowfast_r50_8x8_caffe2_pkl_names.json": "Caffe2 pickle: convert with PySlowFast first",
    "torchvision_raft_large.json": "optical-flow estimator, not a feature backbone",
    "torchvision_raft_small.json": "optical-flow estimator, not a feature backbone",
    "vggsound_resnet18_vlad_I.json": "NetVLAD model I (test_vggsound_netvlad_is_refused)",
}


def test_every_manifest_is_covered(shared_data: Path) -> None:
    names = {path.name for path in (shared_data / "checkpoint_keys").glob("*.json")}
    assert names == set(LOADABLE) | set(NOT_LOADABLE)


def write_checkpoint(state: Any, path: Path) -> Path:
    if path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    else:
        torch.save(state, path)
    return path


LOAD_CASES = [(manifest, *case) for manifest, cases in LOADABLE.items() for case in cases]


@pytest.mark.parametrize(
    ("manifest", "name", "modality", "config", "wrap", "suffix"),
    LOAD_CASES,
    ids=[f"{m.removesuffix('.json')}-{c[1]}-{len(c[2])}" for m, *c in LOAD_CASES],
)
def test_synthetic_checkpoint_loads_and_runs(
    manifest: str,
    name: str,
    modality: str,
    config: dict,
    wrap: Callable,
    suffix: str,
    shared_data: Path,
    tmp_path: Path,
) -> None:
    state = manifest_tensors(shared_data / "checkpoint_keys" / manifest)
    path = write_checkpoint(wrap(state), tmp_path / f"checkpoint{suffix}")
    model = backbones.create(name, modality=modality, weights=path, **config)
    assert not model.training
    with torch.no_grad():
        features = model.forward_features(tiny_input(name, modality))
    assert features.shape == (2, model.num_features) and torch.isfinite(features).all()
    # The first conv holds the file's values (after the layout's rename / transpose).
    first_key, first_value = next(iter(model.state_dict().items()))
    if manifest.startswith("i3d_tf"):
        prefix = {"rgb": "RGB/inception_i3d/", "flow": "Flow/inception_i3d/"}[modality]
        prefix = "" if "kin600" in manifest else prefix
        source = state[f"{prefix}Logits/Conv3d_0c_1x1/conv_3d/w"].permute(4, 3, 0, 1, 2)
        assert torch.equal(model.state_dict()["logits.conv3d.weight"], source)
    elif manifest.startswith("i3d_hassony2"):
        assert torch.equal(first_value, state["conv3d_0c_1x1.conv3d.weight"])
    elif name == "tbn" and manifest.startswith("tbn"):
        stream = {"rgb": "rgb.", "flow": "flow.", "audio": "spec."}[modality]
        assert torch.equal(first_value, state[stream + first_key])
    elif manifest.startswith("vggsound"):
        assert torch.equal(first_value, state["audnet." + first_key])
    elif manifest.startswith("slowfast_r50_8x8_pyslowfast"):
        assert torch.equal(first_value, state["s1.pathway0_stem.conv.weight"])
    else:
        assert torch.equal(first_value, state[first_key])


def test_numpy_scalars_in_trainer_metadata_are_read_safely(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"state_dict": {"a": torch.ones(1)}, "best_prec1": np.float64(1.5)}, path)
    assert float(read_checkpoint(path)["best_prec1"]) == 1.5
    # A file written with numpy 1.x names the scalar type numpy.core.multiarray.scalar.
    old_numpy = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(old_numpy, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(item, data)
    assert float(read_checkpoint(old_numpy)["best_prec1"]) == 1.5


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": {"a": torch.ones(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(
        CheckpointError,
        match=r"weights_only=True\) refuses this file \(GLOBAL argparse\.Namespace\); .*re-save",
    ) as error:
        read_checkpoint(path)
    assert "'model_state_dict'" in str(error.value)  # not one key assumed for every file
    assert "would run" not in str(error.value)


def test_a_checkpoint_that_would_run_a_command_names_the_refused_global(tmp_path: Path) -> None:
    """torch words a global from a module it blocks (os.system is posix.system) otherwise
    than one it merely does not allow; the refusal names it either way, not "a text file"."""
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.ones(1)}, "x": Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "refuses this file (GLOBAL posix.system (its module posix is blocked))" in message
    assert "text file" not in message
    # Not advice to re-save it with weights_only=False: that would run the command.
    assert "would run that code; do not load it" in message
    assert "weights_only=False" not in message
    assert not (tmp_path / "pwned").exists()


class _Call:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


@pytest.mark.parametrize(
    ("payload", "runs_code"),
    [
        (_Call(eval, "1 + 1"), True),  # torch names builtins without a module: "GLOBAL eval"
        (_Call(exec, "x = 1"), True),
        (_Call(getattr, 1, "real"), True),
        (_Call(open, "/dev/null"), True),  # "GLOBAL io.open"
        (argparse.Namespace(lr=0.1), False),  # metadata that published checkpoints carry
        (
            _Call(
                __import__("types").SimpleNamespace,
            ),
            False,
        ),
        (_Call(__import__("functools").partial, int), False),
    ],
)
def test_a_refused_global_that_runs_code_is_never_met_with_advice_to_load_it(
    tmp_path, payload, runs_code
):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"a": torch.ones(1)}, "x": payload}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert ("would run that code; do not load it" in message) == runs_code, message
    assert ("weights_only=False" in message) == (not runs_code), message


@pytest.mark.parametrize("text", ["not a checkpoint\n", '{"state_dict": 1}\n', "junk\n"])
def test_a_text_file_is_not_a_checkpoint_and_is_not_told_to_re_save(tmp_path, text) -> None:
    """Not "it holds Python objects beyond tensors ... weights_only=False": advice that would
    have the user unpickle a file that is no checkpoint at all."""
    path = tmp_path / "junk.pt"
    path.write_text(text)
    with pytest.raises(CheckpointError, match="not a torch checkpoint") as error:
        read_checkpoint(path)
    assert "weights_only=False" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# Wrong layouts: CheckpointError naming the key, the file and the expected layout


@pytest.fixture(scope="module")
def piergiaj_flow(tmp_path_factory, shared_data: Path) -> dict[str, torch.Tensor]:
    return manifest_tensors(shared_data / "checkpoint_keys" / "i3d_piergiaj_flow.json")


def test_flow_checkpoint_for_rgb_says_so(piergiaj_flow, tmp_path: Path) -> None:
    path = write_checkpoint(piergiaj_flow, tmp_path / "flow_imagenet.pt")
    with pytest.raises(CheckpointError) as error:
        backbones.create("i3d", modality="rgb", weights=path)
    message = str(error.value)
    assert "'Conv3d_1a_7x7.conv3d.weight'" in message
    assert str(path) in message
    assert "I3D rgb" in message and "piergiaj" in message
    assert "flow checkpoint" in message and "modality='flow'" in message


def test_rgb_checkpoint_for_flow_says_how_to_extract_flow(
    shared_data: Path, tmp_path: Path
) -> None:
    """`avda extract --modalities rgb,flow --weights rgb_imagenet.pt` (a new user reproducing
    MM-SADA): the hint said to extract the file as rgb and nothing of the flow it was asked for;
    I3D's two streams are two files, extracted in two runs into one store."""
    rgb = manifest_tensors(shared_data / "checkpoint_keys" / "i3d_piergiaj_rgb.json")
    path = write_checkpoint(rgb, tmp_path / "rgb_imagenet.pt")
    with pytest.raises(CheckpointError) as error:
        backbones.create("i3d", modality="flow", weights=path)
    message = str(error.value)
    assert "it is a rgb checkpoint: extract it as rgb (--modalities rgb" in message
    assert "and flow with a flow checkpoint in a run of its own into the same store" in message
    assert "--modalities flow --weights FLOW_FILE, the same -o" in message


@pytest.mark.parametrize(("name", "modality"), [("i3d", "rgb"), ("audio_resnet18", "audio")])
def test_a_raft_state_dict_given_to_a_backbone_is_named_as_flow_weights(
    name: str, modality: str, shared_data: Path, tmp_path: Path
) -> None:
    """torchvision RAFT weights (`avda flow --method raft`) given to --weights / --audio-weights
    were "the keys match no layout known for i3d rgb", listing I3D's layouts."""
    state = manifest_tensors(shared_data / "checkpoint_keys" / "torchvision_raft_small.json")
    path = write_checkpoint(state, tmp_path / "raft_small_C_T_V2-01064c6d.pth")
    with pytest.raises(CheckpointError) as error:
        backbones.create(name, modality=modality, weights=path)
    message = str(error.value)
    assert str(path) in message and "torchvision RAFT state dict" in message
    assert "avda flow --method raft --weights" in message
    assert "known layouts" not in message


def test_missing_key_is_named(piergiaj_flow, tmp_path: Path) -> None:
    state = dict(piergiaj_flow)
    del state["Mixed_4c.b1b.bn.running_var"]
    path = write_checkpoint(state, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"'Mixed_4c\.b1b\.bn\.running_var' is missing"):
        backbones.create("i3d", modality="flow", weights=path)
    # a renamed key: the file's name for it is named too (only the missing one was)
    state["Mixed_4c.b1b.bn.running_varX"] = piergiaj_flow["Mixed_4c.b1b.bn.running_var"]
    path = write_checkpoint(state, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError) as error:
        backbones.create("i3d", modality="flow", weights=path)
    assert (
        "'Mixed_4c.b1b.bn.running_var' is missing from the file (the file has "
        "'Mixed_4c.b1b.bn.running_varX' instead, which the model lacks: renamed?)"
    ) in str(error.value)


def test_wrong_shape_is_named(piergiaj_flow, tmp_path: Path) -> None:
    state = dict(piergiaj_flow)
    state["Mixed_5b.b2b.conv3d.weight"] = torch.zeros(128, 32, 1, 3, 3)
    path = write_checkpoint(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"'Mixed_5b\.b2b\.conv3d\.weight' has shape"):
        backbones.create("i3d", modality="flow", weights=path)


def test_class_count_mismatch_suggests_num_classes(piergiaj_flow, tmp_path: Path) -> None:
    """piergiaj's Charades files (157 classes) load with the file's class count (the CLI has no
    num_classes, and features do not depend on it); a count asked for that the file does not
    have is refused with the file's."""
    state = dict(piergiaj_flow)
    state["logits.conv3d.weight"] = torch.zeros(157, 1024, 1, 1, 1)
    state["logits.conv3d.bias"] = torch.zeros(157)
    path = write_checkpoint(state, tmp_path / "flow_charades.pt")
    model = backbones.create("i3d", modality="flow", weights=path)
    assert model.config.num_classes == 157
    with pytest.raises(CheckpointError, match="num_classes=157"):
        backbones.create("i3d", modality="flow", weights=path, num_classes=400)
    backbones.create("i3d", modality="flow", weights=path, num_classes=157)
    assert backbones.create("i3d", modality="flow").config.num_classes == 400  # no file


def test_a_classifier_of_the_right_class_count_gets_no_class_count_hint(piergiaj_flow, tmp_path):
    """400 classes and the wrong input width: "pass num_classes=400" would be no help."""
    state = dict(piergiaj_flow)
    state["logits.conv3d.weight"] = torch.zeros(400, 512, 1, 1, 1)
    path = write_checkpoint(state, tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match=r"'logits\.conv3d\.weight' has shape") as info:
        backbones.create("i3d", modality="flow", weights=path)
    assert "num_classes" not in str(info.value)


def test_num_batches_tracked_missing_accepted_extra_ignored(piergiaj_flow, tmp_path) -> None:
    state = {k: v for k, v in piergiaj_flow.items() if not k.endswith("num_batches_tracked")}
    state["Mixed_9z.bn.num_batches_tracked"] = torch.tensor(3)
    path = write_checkpoint(state, tmp_path / "old_torch.pt")
    model = backbones.create("i3d", modality="flow", weights=path)
    assert torch.equal(model.state_dict()["Mixed_3b.b0.bn.bias"], state["Mixed_3b.b0.bn.bias"])


def test_unexpected_key_is_named(piergiaj_flow, tmp_path: Path) -> None:
    state = dict(piergiaj_flow)
    state["Mixed_5c.extra.weight"] = torch.zeros(3)
    path = write_checkpoint(state, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"'Mixed_5c\.extra\.weight' is in the file"):
        backbones.create("i3d", modality="flow", weights=path)


def test_unknown_layout_lists_known_layouts(tmp_path: Path) -> None:
    path = write_checkpoint({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="piergiaj.*hassony2.*deepmind-tf"):
        backbones.create("i3d", modality="rgb", weights=path)


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        backbones.create("audio_resnet18", modality="audio", weights=tmp_path / "H.pth.tar")


def test_tbn_rgb_bninception_for_flow_says_rgb(shared_data: Path, tmp_path: Path) -> None:
    state = manifest_tensors(shared_data / "checkpoint_keys" / "bninception_imagenet_tsn.json")
    path = write_checkpoint(state, tmp_path / "bn_inception.pth")
    with pytest.raises(CheckpointError, match=r"'conv1_7x7_s2\.weight'.*rgb checkpoint"):
        backbones.create("tbn", modality="flow", weights=path)


def test_tbn_checkpoint_without_the_stream_names_it(shared_data: Path, tmp_path: Path) -> None:
    state = manifest_tensors(
        shared_data / "checkpoint_keys" / "tbn_epic55_rgb_flow_spec_concat.json"
    )
    state = {k: v for k, v in state.items() if not k.startswith("spec.")}
    path = write_checkpoint(_tbn_wrapping(1.0)(state), tmp_path / "tbn_rgb_flow.pth")
    with pytest.raises(CheckpointError, match="no 'spec.' stream.*flow, fusion"):
        backbones.create("tbn", modality="audio", weights=path)


def test_vggsound_netvlad_is_refused(shared_data: Path, tmp_path: Path) -> None:
    state = manifest_tensors(shared_data / "checkpoint_keys" / "vggsound_resnet18_vlad_I.json")
    path = write_checkpoint(_vggsound(state), tmp_path / "I.pth.tar")
    with pytest.raises(CheckpointError, match="NetVLAD"):
        backbones.create("audio_resnet18", modality="audio", weights=path)


WRONG_BACKBONE = [
    (manifest, own, wrapping, suffix)
    for manifest, cases in LOADABLE.items()
    for own, _, _, wrapping, suffix in cases[:1]
]


@pytest.mark.parametrize(("manifest", "own", "wrapping", "suffix"), WRONG_BACKBONE)
def test_a_checkpoint_for_another_backbone_names_it(
    shared_data: Path, tmp_path: Path, manifest, own, wrapping, suffix
) -> None:
    """A SlowFast file given to i3d (and every other pairing) says which --backbone it is for."""
    state = manifest_tensors(shared_data / "checkpoint_keys" / manifest)
    path = write_checkpoint(wrapping(state), tmp_path / f"weights{suffix}")
    for other in backbones.names():
        if other == own:
            continue
        modality = "audio" if other == "audio_resnet18" else "rgb"
        with pytest.raises(CheckpointError) as error:
            backbones.create(other, modality=modality, weights=path)
        message = str(error.value)
        visual, audio = ("i3d", "slowfast"), "audio_resnet18"
        if other == audio and own in visual:  # a visual file given as audio weights (it said
            # "use --backbone i3d" for an --audio-weights value; i3d is no audio backbone)
            expected = f"give it to --weights (--backbone {own}), not to --audio-weights"
        elif own == audio:  # given to a visual stream (tbn's too: modality rgb here)
            expected = f"give it to --audio-weights (--audio-backbone {own}), not to --weights"
        elif other == audio:  # tbn's file given as audio weights
            expected = f"use --audio-backbone {own}"
        else:
            expected = f"use --backbone {own}"
        assert expected in message, (other, message)
        assert f"a checkpoint of {own}" in message
        # `avda finetune` has no --audio-weights / --audio-backbone: its own options are named
        with pytest.raises(CheckpointError) as error, advising("finetune"):
            backbones.create(other, modality=modality, weights=path)
        message = str(error.value)
        if other == audio and own in visual:
            expected = f"a visual backbone's file: fine-tune --backbone {own} --modality rgb"
        elif own == audio:
            expected = f"an audio backbone's file: fine-tune --backbone {own} --modality audio"
        else:
            expected = f"fine-tune --backbone {own}"
        assert expected in message and "-weights" not in message, (other, message)


# ---------------------------------------------------------------------------------------------
# Parity between layouts, and with torchvision


def test_i3d_key_maps_match_the_published_tables(shared_data: Path) -> None:
    tables = json.loads((shared_data / "checkpoint_keys" / "i3d_key_mapping.json").read_text())
    for piergiaj, hassony2 in tables["piergiaj_to_hassony2"].items():
        assert i3d.piergiaj_to_hassony2(piergiaj) == hassony2
    for tf_name, piergiaj in tables["tf_to_piergiaj"].items():
        assert i3d.tf_to_piergiaj(tf_name.split("/", 1)[1].split("/", 1)[1]) == piergiaj


def test_i3d_piergiaj_hassony2_tf_give_identical_features(shared_data, tmp_path) -> None:
    tables = json.loads((shared_data / "checkpoint_keys" / "i3d_key_mapping.json").read_text())
    state = manifest_tensors(shared_data / "checkpoint_keys" / "i3d_piergiaj_rgb.json", seed=3)
    for key in state:
        if key.endswith("bn.weight"):
            state[key] = torch.ones_like(state[key])  # converted DeepMind files: gamma = 1
    hassony2 = {tables["piergiaj_to_hassony2"][k]: v for k, v in state.items()}
    tf = {}
    for tf_name, key in tables["tf_to_piergiaj"].items():
        value = state[key]
        if tf_name.endswith("conv_3d/w"):
            value = value.permute(2, 3, 4, 1, 0)  # [Cout,Cin,kT,kH,kW] -> [kT,kH,kW,Cin,Cout]
        tf[tf_name.replace("{RGB|Flow}", "RGB")] = value.contiguous()
    x = tiny_input("i3d", "rgb", seed=5)
    outputs = []
    for layout, payload, suffix in (
        ("p", state, ".pt"),
        ("h", hassony2, ".pth"),
        ("t", tf, ".npz"),
    ):
        path = write_checkpoint(payload, tmp_path / f"{layout}{suffix}")
        with torch.no_grad():
            outputs.append(backbones.create("i3d", modality="rgb", weights=path)(x))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_pyslowfast_rename_matches_published_table(shared_data: Path) -> None:
    table = json.loads((shared_data / "checkpoint_keys" / "slowfast_key_mapping.json").read_text())
    for pyslowfast_key, pytorchvideo_key in table["pyslowfast_to_pytorchvideo"].items():
        assert slowfast.pyslowfast_to_pytorchvideo(pyslowfast_key) == pytorchvideo_key


def test_slowfast_pyslowfast_names_load_to_identical_outputs(shared_data, tmp_path) -> None:
    table = json.loads((shared_data / "checkpoint_keys" / "slowfast_key_mapping.json").read_text())
    state = manifest_tensors(shared_data / "checkpoint_keys" / "slowfast_r50_8x8_pytorchvideo.json")
    inverse = {v: k for k, v in table["pyslowfast_to_pytorchvideo"].items()}
    renamed = {inverse[k]: v for k, v in state.items()}
    x = tiny_input("slowfast", "rgb")
    outputs = []
    for name, payload in (("pytorchvideo", state), ("pyslowfast", renamed)):
        path = write_checkpoint(_model_state(payload), tmp_path / f"{name}.pyth")
        with torch.no_grad():
            outputs.append(backbones.create("slowfast", modality="rgb", weights=path)(x))
    assert torch.equal(outputs[0], outputs[1])


def test_audio_resnet18_is_torchvision_resnet18_bit_identical(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    reference = resnet18(num_classes=309)
    reference.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    reference.eval()
    state = reference.state_dict()
    x = tiny_input("audio_resnet18", "audio")
    for name, payload in (
        ("tv.pth", state),
        ("H.pth.tar", _vggsound({"audnet." + k: v for k, v in state.items()})),
    ):
        path = write_checkpoint(payload, tmp_path / name)
        model = backbones.create("audio_resnet18", modality="audio", weights=path)
        with torch.no_grad():
            assert torch.equal(model(x), reference(x))


# ---------------------------------------------------------------------------------------------
# I3D and SlowFast details


def test_same_padding_matches_tensorflow_formula() -> None:
    for size in range(1, 40):
        for kernel in range(1, 8):
            for stride in (1, 2):
                front, back = i3d.same_padding(size, kernel, stride)
                total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
                assert (front + back, back - front) in ((total, total % 2),)


def test_i3d_max_pool_without_padded_copy_equals_zero_padded_pool() -> None:
    """The ceil-mode pool (no padded copy) takes exactly the zero-padded SAME windows."""
    generator = torch.Generator().manual_seed(0)
    used_fast_path = 0
    for kernel, stride in (((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2))):
        for size in ((1, 1, 1), (2, 5, 5), (4, 7, 8), (8, 28, 28), (9, 57, 56), (3, 112, 113)):
            x = torch.rand((1, 2, *size), generator=generator)  # post-ReLU: non-negative
            used_fast_path += i3d.pool_padding(size, kernel, stride) is not None
            expected = F.max_pool3d(i3d.pad_same(x, kernel, stride), kernel, stride)
            assert torch.equal(i3d.MaxPool3dSame(kernel, stride)(x), expected), (kernel, size)
    assert used_fast_path >= 15
    for kernel in ((3, 3, 3), (1, 3, 3), (3, 1, 5)):  # stride 1: separable, exact for any sign
        for size in ((1, 1, 1), (2, 5, 5), (4, 7, 8), (8, 28, 28)):
            x = torch.randn((2, 3, *size), generator=generator)
            padding = tuple(k // 2 for k in kernel)
            expected = F.max_pool3d(x, kernel, 1, padding)
            assert torch.equal(i3d.separable_max_pool(x, kernel), expected), (kernel, size)
            assert torch.equal(i3d.MaxPool3dSame(kernel, (1, 1, 1))(x.relu()), expected.relu())


def test_i3d_small_inputs_pool_what_exists() -> None:
    model = build("i3d", "rgb")
    with torch.no_grad():
        x = torch.randn(1, 3, 8, 32, 32)  # one Mixed_5c time step, 1x1 map
        assert torch.equal(model.forward_features(x), model.forward_spatial(x).flatten(1))
        x = torch.randn(1, 3, 16, 112, 112)  # map (2, 4, 4): the pool covers all of it
        spatial = model.forward_spatial(x)
        assert torch.allclose(model.forward_features(x), spatial.mean(dim=(2, 3, 4)), atol=1e-6)


def test_slowfast_pathways_follow_pyslowfast_indices() -> None:
    clip = torch.arange(32.0).reshape(1, 1, 32, 1, 1).expand(1, 3, 32, 1, 1)
    slow, fast = slowfast.pathways(clip)
    assert slow[0, 0, :, 0, 0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert fast is clip


# ---------------------------------------------------------------------------------------------
# Numerical parity with the reference implementations (golden values)


def _recipe() -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    spec = importlib.util.spec_from_file_location(
        "make_reference_values", HERE / "make_reference_values.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_files_exist() -> None:
    assert len(REFERENCE_FILES) == 7
    assert all(path.stat().st_size < 200_000 for path in REFERENCE_FILES)


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=[p.stem for p in REFERENCE_FILES])
def test_matches_reference_implementation(path: Path) -> None:
    recipe = _recipe()
    record = torch.load(path, weights_only=True)
    model = build(record["backbone"], record["modality"])
    model.load_state_dict(recipe.seeded_state_dict(model.state_dict()))
    inputs = [recipe.seeded_input(tuple(s), i) for i, s in enumerate(record["input_shapes"])]
    for x, expected_sum in zip(inputs, record["input_sums"], strict=True):
        assert float(x.double().sum()) == pytest.approx(expected_sum, rel=1e-9)
    x = inputs if record["backbone"] == "slowfast" else inputs[0]
    with torch.no_grad():
        spatial = model.forward_spatial(x)
        ours = {"features": model.forward_features(x), "logits": model(x)}
    if record["backbone"] == "slowfast":
        ours["slow_spatial_mean"] = spatial[0].mean(dim=(3, 4))
        ours["fast_spatial_mean"] = spatial[1].mean(dim=(3, 4))
    elif record["backbone"] == "tbn":
        ours["spatial_subsampled"] = spatial[:, :, ::3, ::3]
    elif record["backbone"] == "i3d":
        ours["spatial_mean"] = spatial.mean(dim=(3, 4))
    else:
        ours["spatial_mean"] = spatial.mean(dim=3)
    for key, expected in record["outputs"].items():
        error = (ours[key] - expected).abs().max() / expected.abs().max()
        assert error < 1e-4, f"{path.name} {key}: relative error {error:.2e}"


@pytest.mark.parametrize(("name", "modality"), [("audio_resnet18", "audio"), ("i3d", "rgb")])
def test_bfloat16_batch_runner_matches_float32(name: str, modality: str) -> None:
    """The CPU bf16 path: weights cast once, features float32 and close to the fp32 path."""
    from avda.extract.inference import BatchRunner, prepare_model

    x = tiny_input(name, modality)
    original = build(name, modality)
    results = {}
    for precision in ("float32", "bfloat16"):
        model = prepare_model(copy.deepcopy(original), "cpu")
        runner = BatchRunner(
            model, device="cpu", batch_size=4, normalisation="", visual=False, spatial=False,
            precision=precision,
        )  # fmt: skip
        weight = next(model.parameters())
        assert weight.dtype == (torch.bfloat16 if precision == "bfloat16" else torch.float32)
        out = runner.add(0, x) + runner.flush()
        ((row, features, _, status, _),) = out
        assert row == 0 and status == int(Status.DONE) and features.dtype == np.float32
        results[precision] = features
    reference = results["float32"]
    error = np.abs(results["bfloat16"] - reference).max() / np.abs(reference).max()
    assert 0 < error < 0.05


def test_auto_precision_is_bfloat16_only_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from avda.extract.inference import resolve_precision

    for avx512_bf16, amx, expected in ((True, False, "bfloat16"), (False, True, "bfloat16"),
                                       (False, False, "float32")):  # fmt: skip
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto", "cpu") == expected
        assert resolve_precision("float32", "cpu") == "float32"
        assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ConfigError, match="float16.*expected auto, float32 or bfloat16"):
        resolve_precision("float16", "cpu")  # type: ignore[arg-type]


def test_a_caffe2_pickle_is_named_and_never_unpickled(tmp_path: Path, capfd) -> None:
    """PySlowFast's SLOWFAST_8x8_R50.pkl (Caffe2 blobs in a plain pickle), or one that would run
    code: one line naming what it is and where the conversion is described, nothing
    unpickled (torch's warnings about legacy files are not printed either)."""
    import os
    import pickle

    class Command:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "SLOWFAST_8x8_R50.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"blobs": {"conv1_w": Command()}}, handle, protocol=2)
    with pytest.raises(
        CheckpointError,
        match=r"a plain pickle \(\.pkl: Caffe2 / Detectron .*"
        r"docs/backbones.md \(Converting other files\)",
    ):
        backbones.create("slowfast", modality="rgb", weights=path)  # fmt: skip
    assert not (tmp_path / "pwned").exists()
    assert "UserWarning" not in capfd.readouterr().err


def test_a_truncated_checkpoint_says_to_fetch_it_again(piergiaj_flow, tmp_path: Path) -> None:
    """An interrupted download: one line with the first line of torch's reason and the fix."""
    path = write_checkpoint(piergiaj_flow, tmp_path / "flow_imagenet.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        backbones.create("i3d", modality="flow", weights=path)
    message = str(info.value)
    assert "\n" not in message, message
    assert "not a readable torch checkpoint" in message and "fetch it again" in message
