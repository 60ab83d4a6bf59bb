"""TA3N under protocol ``ta3n-ucf-hmdb`` against the original code (``cmhungsteve/TA3N``,
2c65b5d): its ``VideoModel`` in the UCF-HMDB configuration of ``script_train_val.sh`` (RGB
ResNet-101 frame features, 2048-d, 12 classes, 5 segments, trn-m, add_fc 1, fc_dim 512,
TransAttn, use_bn none; dropout 0 so that the numbers are deterministic) with every parameter
set by :func:`_value` from its *authors'* name, and the loss assembled as its ``main.py
train()`` does with the H->U values: ``CE + sum of the three domain CEs + 0.3 * attentive
entropy``, beta (1, 0.75, 0.5). ``AVDA_TA3N_ORIGINAL=<checkout>`` also runs the comparison
against the code itself (``test_live_parity_with_the_original``; not copied here).
"""

from __future__ import annotations

import builtins
import importlib
import os
import sys
import types

import numpy as np
import pytest
import torch

from avda import protocols
from avda.errors import CheckpointError
from avda.train import heads
from avda.train.data import Task
from avda.train.heads.ta3n import authors_key_map, convert_authors_state_dict

torch.set_num_threads(1)
TASKS = [Task("verb", 12)]

# From the original code (see the module docstring; the script that made them ran it with
# torchvision's resnet101 built without weights, which their _prepare_DA only reads the width of).
GOLDEN = {
    "loss": 6.677055358886719,
    "classification": 3.5037739276885986,
    "adversarial_relation": 0.6995360255241394,
    "adversarial_video": 0.6870003938674927,
    "adversarial_frame": 0.6842261552810669,
    "attentive_entropy": 3.6750636100769043,
}
GOLDEN_GRADIENT_SUMS = {  # sum |grad| per authors' parameter
    "fc_feature_shared_source.weight": 4488.377069400094,
    "fc_classifier_video_source.weight": 1093.4472290875274,
    "relation_domain_classifier_all.2.0.weight": 10.08298330185002,
    "fc_feature_domain.weight": 3.1495690110066548,
    "fc_classifier_domain_video.bias": 0.12439998984336853,
    "TRN.fc_fusion_scales.0.1.weight": 441.7528245632105,
}
GOLDEN_EVAL_ROW0 = [
    -0.9406905174255371, -0.358540803194046, 0.3031396269798279, 0.9009125232696533,
    1.3049980401992798, 1.427535057067871, 1.241735577583313, 0.7877405881881714,
    0.1639089584350586, -0.4945785403251648, -1.045119047164917, -1.368696928024292,
]  # fmt: skip
GOLDEN_EVAL_TARGET_SUM = 7.6821302473545074
AUTHORS_LOSS_PATH_PARAMETERS = 3483416  # of their 3,884,836: those that receive a gradient


def _value(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    offset = sum(map(ord, name)) % 101
    values = 0.05 * torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + offset)
    return values.float().reshape(shape)


def _inputs(batch: int, shift: float) -> torch.Tensor:
    n = torch.arange(batch * 5 * 2048, dtype=torch.float64)
    x = torch.sin(n * 0.011 + shift) + 0.5 * torch.cos(n * 0.007)
    return x.float().reshape(batch, 5, 2048)


def _protocol_head():
    """TA3N as ta3n-ucf-hmdb trains it on hmdb -> ucf, dropout 0."""
    head, values = protocols.get("ta3n-ucf-hmdb").resolve("ta3n", None, ["hmdb"], ["ucf"])
    values = {**values, "frame_dropout": 0.0, "video_dropout": 0.0}
    return heads.create(head, inputs={"rgb": (5, 2048)}, tasks=TASKS, overrides=values)


def _set_weights(head) -> dict[str, str]:
    mapping = authors_key_map(5, ["verb"], original=True)
    ours = dict(head.named_parameters())
    with torch.no_grad():
        for theirs, name in mapping.items():
            ours[name].copy_(_value(theirs, ours[name].shape))
    return mapping


def test_golden_loss_gradients_and_outputs_of_the_original():
    head = _protocol_head()
    assert sum(p.numel() for p in head.parameters()) == AUTHORS_LOSS_PATH_PARAMETERS
    mapping = _set_weights(head)
    head.train()
    label = {"verb": torch.tensor([3, 11, 0])}
    losses = head.training_step(
        {"rgb": _inputs(3, 0.0)}, label, {"rgb": _inputs(4, 1.0)}, progress=0.4
    )
    for key, expected in GOLDEN.items():
        assert float(losses[key].detach()) == pytest.approx(expected, rel=2e-5), key
    losses["loss"].backward()
    ours = dict(head.named_parameters())
    for theirs, expected in GOLDEN_GRADIENT_SUMS.items():
        gradient = ours[mapping[theirs]].grad.double().abs().sum()
        assert float(gradient) == pytest.approx(expected, rel=1e-4), theirs
    head.eval()
    with torch.no_grad():
        source = head({"rgb": _inputs(3, 0.0)}).logits["verb"]
        target = head({"rgb": _inputs(4, 1.0)}).logits["verb"]
    torch.testing.assert_close(source[0], torch.tensor(GOLDEN_EVAL_ROW0), rtol=0, atol=2e-5)
    assert float(target.double().sum()) == pytest.approx(GOLDEN_EVAL_TARGET_SUM, rel=1e-4)


# From the original code with frame_aggregation avgpool and use_attn none (DANN + TemPooling),
# every parameter at _value of its name, the loss as main.py with --place_adv Y Y Y, whose
# relation and video slots both hold the video discriminator's 0.6836947 (the frame's
# 0.6842262 as above): classification 2.4349709
GOLDEN_TEMPOOLING_LOSS = 4.486586570739746
GOLDEN_TEMPOOLING_GRADIENT_SUMS = {
    "fc_feature_shared_source.weight": 2333.3267476864125,
    "fc_classifier_video_source.weight": 23.617602261354477,
    "fc_feature_domain.weight": 3.1495690110066548,
    "fc_feature_domain_video.weight": 5.281601772508793,
    "fc_classifier_domain_video.bias": 0.07869553565979004,
}
GOLDEN_TEMPOOLING_EVAL_ROW0 = [
    -0.14331012964248657, -0.30021628737449646, -0.1999312937259674, 0.08606936037540436,
    0.32986968755722046, 0.3345497250556946, 0.09650149941444397, -0.19162079691886902,
    -0.29975342750549316, -0.14969035983085632, 0.12172041833400726, 0.2775459289550781,
]  # fmt: skip
GOLDEN_TEMPOOLING_EVAL_TARGET_SUM = -0.14734213054180145
TEMPOOLING_LOSS_PATH_PARAMETERS = 1582608  # of their 2,376,732: those that get a gradient


def test_golden_dann_tempooling_of_the_original():
    """The protocol's dann-tempooling (hmdb -> ucf, dropout 0) with the weights of the
    original's avgpool model: its main.py loss (the video domain CE twice), gradients and test
    outputs."""
    head = _tempooling_head("none")
    assert head.relation is None and len(head.relation_discriminators) == 0
    assert sum(p.numel() for p in head.parameters()) == TEMPOOLING_LOSS_PATH_PARAMETERS
    mapping = authors_key_map(5, ["verb"], original=True, relations=False)
    ours = dict(head.named_parameters())
    assert set(mapping.values()) == set(ours)
    # their avgpool checkpoint (no TRN keys) loads through the conversion
    theirs = {f"module.{k}": _value(k, ours[v].shape) for k, v in mapping.items()}
    head.load_state_dict(convert_authors_state_dict(theirs, head))
    with pytest.raises(CheckpointError, match=r"has shape \(12, 256\).*\(12, 512\)"):
        convert_authors_state_dict(  # a trn-m checkpoint: 256-d video features
            {f"module.{k}": _value(k, (12, 256) if "classifier_video" in k else ours[v].shape)
             for k, v in mapping.items()}, head,
        )  # fmt: skip
    head.train()
    label = {"verb": torch.tensor([3, 11, 0])}
    losses = head.training_step(
        {"rgb": _inputs(3, 0.0)}, label, {"rgb": _inputs(4, 1.0)}, progress=0.4
    )
    assert set(losses) == {
        "loss", "classification", "adversarial_video", "adversarial_frame",
        "attentive_entropy", "beta_relation",
    }  # fmt: skip
    assert float(losses["classification"].detach()) == pytest.approx(2.4349708557, rel=2e-5)
    assert float(losses["adversarial_video"].detach()) == pytest.approx(0.6836947202, rel=2e-5)
    assert float(losses["loss"].detach()) == pytest.approx(GOLDEN_TEMPOOLING_LOSS, rel=2e-5)
    losses["loss"].backward()
    for theirs, expected in GOLDEN_TEMPOOLING_GRADIENT_SUMS.items():
        gradient = ours[mapping[theirs]].grad.double().abs().sum()
        assert float(gradient) == pytest.approx(expected, rel=1e-4), theirs
    head.eval()
    with torch.no_grad():
        source = head({"rgb": _inputs(3, 0.0)}).logits["verb"]
        target = head({"rgb": _inputs(4, 1.0)}).logits["verb"]
    torch.testing.assert_close(
        source[0], torch.tensor(GOLDEN_TEMPOOLING_EVAL_ROW0), rtol=0, atol=2e-5
    )
    assert float(target.double().sum()) == pytest.approx(
        GOLDEN_TEMPOOLING_EVAL_TARGET_SUM, rel=1e-3, abs=1e-5
    )


def test_an_original_checkpoint_converts():
    head = _protocol_head()
    mapping = authors_key_map(5, ["verb"], original=True)
    theirs = {f"module.{k}": _value(k, head.state_dict()[v].shape) for k, v in mapping.items()}
    theirs["module.fc_classifier_source.weight"] = torch.zeros(12, 512)  # unused there too
    converted = convert_authors_state_dict(theirs, head)
    torch.testing.assert_close(converted["classifiers.verb.weight"], _value(
        "fc_classifier_video_source.weight", (12, 256)))  # fmt: skip
    two_tasks = heads.create(
        "ta3n", inputs={"rgb": (5, 2048)}, tasks=[*TASKS, Task("noun", 3)],
        overrides={"use_bn": "none"},
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=r"one classifier.*--set tasks=verb"):
        convert_authors_state_dict(theirs, two_tasks)


def _original_model(use_attn: str = "TransAttn", aggregation: str = "trn-m"):
    """The original code's ``VideoModel`` in the UCF-HMDB configuration (dropout 0; frame
    aggregation ``aggregation``) and its ``loss`` module, from ``AVDA_TA3N_ORIGINAL``."""
    path = os.environ["AVDA_TA3N_ORIGINAL"]
    if "colorama" not in sys.modules and importlib.util.find_spec("colorama") is None:
        stub = types.ModuleType("colorama")  # only used for coloured prints
        stub.init = lambda **kwargs: None
        stub.Fore = stub.Back = stub.Style = types.SimpleNamespace(RED="", CYAN="", GREEN="")
        sys.modules["colorama"] = stub
    import torchvision

    builtins.torch = torch  # models.py relies on an old `from torch.nn.init import *` export
    resnet101 = torchvision.models.resnet101
    # their _prepare_DA builds resnet101(True) only to read its width: no ImageNet download
    torchvision.models.resnet101 = lambda *args, **kwargs: resnet101(weights=None)
    sys.path.insert(0, path)
    for name in ("models", "loss", "TRNmodule"):  # the EPIC-100 code's modules share the names
        sys.modules.pop(name, None)
    try:
        models = importlib.import_module("models")
        authors_loss = importlib.import_module("loss")
        reference = models.VideoModel(
            12, "video", aggregation, "RGB", train_segments=5, val_segments=5,
            base_model="resnet101", add_fc=1, fc_dim=512, dropout_i=0.0, dropout_v=0.0,
            partial_bn=False, use_bn="none", ens_DA="none", use_attn=use_attn, n_attn=1,
            use_attn_frame="none", verbose=False, share_params="Y",
        )  # fmt: skip
    finally:
        sys.path.remove(path)
        torchvision.models.resnet101 = resnet101
        for name in ("models", "loss", "TRNmodule"):
            sys.modules.pop(name, None)
    return reference, authors_loss


@pytest.mark.skipif(
    not os.environ.get("AVDA_TA3N_ORIGINAL"),
    reason="set AVDA_TA3N_ORIGINAL to a checkout of cmhungsteve/TA3N",
)
def test_live_parity_with_the_original():
    """Their models.py and loss.py run here: the losses of a training step, every gradient and
    the test outputs of both domains equal the head's under the protocol's H->U values."""
    reference, authors_loss = _original_model()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    head = _protocol_head()
    head.load_state_dict(convert_authors_state_dict(reference.state_dict(), head))
    source = torch.randn(4, 5, 2048, generator=generator)
    target = torch.randn(6, 5, 2048, generator=generator) + 0.3
    label = torch.tensor([1, 5, 11, 0])
    beta = list(head.beta(0.4))
    assert beta == [1.0, 0.75, 0.5]  # the script's H->U values, constant
    reference.train()
    _, out_s, _, domain_s, _, _, out_t, _, domain_t, _ = reference(
        source, target, beta, 0, is_train=True, reverse=False
    )
    ce = torch.nn.CrossEntropyLoss()
    total, domains = ce(out_s, label), []
    for level in range(3):
        s, t = domain_s[level].reshape(-1, 2), domain_t[level].reshape(-1, 2)
        domains.append(torch.cat([s, t]))
        total = total + ce(domains[-1], torch.cat([torch.zeros(len(s)), torch.ones(len(t))]).long())
    total = total + 0.3 * authors_loss.attentive_entropy(torch.cat([out_s, out_t]), domains[1])
    total.backward()
    ours = head.training_step({"rgb": source}, {"verb": label}, {"rgb": target}, 0.4)
    ours["loss"].backward()
    assert float(ours["loss"].detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    named = dict(head.named_parameters())
    key_map = authors_key_map(5, ["verb"], original=True)
    checked = 0
    for their_name, parameter in reference.named_parameters():
        if parameter.grad is None:
            continue
        # their two forward passes and avda's joint one sum in another order: float32
        # rounding, measured at most 2e-6 of each tensor's largest gradient
        scale = float(parameter.grad.abs().max())
        torch.testing.assert_close(
            named[key_map[their_name]].grad, parameter.grad, rtol=1e-4, atol=1e-5 * scale
        )
        checked += 1
    assert checked == len(named)
    reference.eval()
    head.eval()
    with torch.no_grad():
        theirs = reference(source, target, [0, 0, 0], 0, is_train=False, reverse=False)
        torch.testing.assert_close(head({"rgb": source}).logits["verb"], theirs[1])
        torch.testing.assert_close(head({"rgb": target}).logits["verb"], theirs[6])


@pytest.mark.skipif(
    not os.environ.get("AVDA_TA3N_ORIGINAL"),
    reason="set AVDA_TA3N_ORIGINAL to a checkout of cmhungsteve/TA3N",
)
def test_live_source_only_is_the_originals_use_target_none():
    """script_train_val.sh with use_target=none (use_attn none, beta 0): main.py's loss is the
    CE alone; after clip_grad_norm_(20) every parameter's update equals that of the source-only
    that ta3n-ucf-hmdb configures for H->U."""
    reference, _ = _original_model("none")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    head_name, values = protocols.get("ta3n-ucf-hmdb").resolve(
        "source-only", None, ["hmdb"], ["ucf"]
    )
    values = {**values, "frame_dropout": 0.0, "video_dropout": 0.0}
    head = heads.create(head_name, inputs={"rgb": (5, 2048)}, tasks=TASKS, overrides=values)
    head.load_state_dict(convert_authors_state_dict(reference.state_dict(), head))
    source = 3 * torch.randn(4, 5, 2048, generator=generator)
    target = 3 * torch.randn(6, 5, 2048, generator=generator) + 0.3
    label = torch.tensor([1, 5, 11, 0])
    reference.train()
    out_s = reference(source, target, [0.0, 0.0, 0.0], 0, is_train=True, reverse=False)[1]
    total = torch.nn.CrossEntropyLoss()(out_s, label)
    total.backward()
    their_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 20.0)
    ours = head.training_step({"rgb": source}, {"verb": label}, {"rgb": target}, 0.4)
    assert set(ours) == {"loss", "classification"}
    ours["loss"].backward()
    assert head.config.grad_clip == 20.0
    our_norm = torch.nn.utils.clip_grad_norm_(head.parameters(), head.config.grad_clip)
    assert float(ours["loss"].detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    assert float(their_norm) > 20.0  # the clip shrinks this step
    assert float(our_norm) == pytest.approx(float(their_norm), rel=1e-5)
    named = dict(head.named_parameters())
    key_map = authors_key_map(5, ["verb"], original=True)
    with_gradient = set()
    for their_name, parameter in reference.named_parameters():
        if parameter.grad is None:
            continue
        with_gradient.add(key_map[their_name])
        scale = float(parameter.grad.abs().max())
        torch.testing.assert_close(
            named[key_map[their_name]].grad, parameter.grad, rtol=1e-4, atol=1e-5 * scale
        )
    assert with_gradient == {n for n, p in named.items() if p.grad is not None}


def _tempooling_head(use_attn: str):
    """DANN + TemPooling as ta3n-ucf-hmdb trains it on hmdb -> ucf (dropout 0), with the
    attention of ``use_attn`` (the protocol's: none)."""
    head, values = protocols.get("ta3n-ucf-hmdb").resolve(
        "dann-tempooling", None, ["hmdb"], ["ucf"]
    )
    values = {**values, "frame_dropout": 0.0, "video_dropout": 0.0}
    if use_attn == "TransAttn":
        values.update(domain_attention=True, attentive_entropy_weight=0.3)
    return heads.create(head, inputs={"rgb": (5, 2048)}, tasks=TASKS, overrides=values)


def _main_py_loss(reference, authors_loss, source, target, label, beta, gamma):
    """The loss ``main.py train()`` assembles: CE, the domain CE of each of the three slots
    of ``--place_adv Y Y Y`` and, with the attention on, gamma x the attentive entropy."""
    _, out_s, _, domain_s, _, _, out_t, _, domain_t, _ = reference(
        source, target, beta, 0, is_train=True, reverse=False
    )
    ce = torch.nn.CrossEntropyLoss()
    total, domains = ce(out_s, label), []
    for level in range(3):
        s, t = domain_s[level].reshape(-1, 2), domain_t[level].reshape(-1, 2)
        domains.append(torch.cat([s, t]))
        total = total + ce(domains[-1], torch.cat([torch.zeros(len(s)), torch.ones(len(t))]).long())
    if reference.use_attn != "none":
        total = total + gamma * authors_loss.attentive_entropy(
            torch.cat([out_s, out_t]), domains[1]
        )
    return total


@pytest.mark.skipif(
    not os.environ.get("AVDA_TA3N_ORIGINAL"),
    reason="set AVDA_TA3N_ORIGINAL to a checkout of cmhungsteve/TA3N",
)
@pytest.mark.parametrize("use_attn", ["none", "TransAttn"])
def test_live_dann_tempooling_is_the_originals_avgpool(use_attn):
    """#23's DANN + TemPooling (frame_aggregation avgpool, use_attn none, script_train_val.sh's
    --place_adv Y Y Y, whose relation slot models.py fills with the video prediction: the video
    domain loss counts twice): the loss, every gradient and the test outputs equal the
    protocol's dann-tempooling (and with TransAttn, the frames weighted before the mean)."""
    reference, authors_loss = _original_model(use_attn, "avgpool")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    head = _tempooling_head(use_attn)
    head.load_state_dict(convert_authors_state_dict(reference.state_dict(), head))
    source = torch.randn(4, 5, 2048, generator=generator)
    target = torch.randn(6, 5, 2048, generator=generator) + 0.3
    label = torch.tensor([1, 5, 11, 0])
    beta = list(head.beta(0.4))
    assert beta == [1.0, 0.75, 0.5]
    reference.train()
    total = _main_py_loss(reference, authors_loss, source, target, label, beta, 0.3)
    total.backward()
    ours = head.training_step({"rgb": source}, {"verb": label}, {"rgb": target}, 0.4)
    ours["loss"].backward()
    assert float(ours["loss"].detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    named = dict(head.named_parameters())
    key_map = authors_key_map(5, ["verb"], original=True, relations=False)
    with_gradient = set()
    for their_name, parameter in reference.named_parameters():
        if parameter.grad is None:
            continue
        with_gradient.add(key_map[their_name])
        scale = float(parameter.grad.abs().max())
        torch.testing.assert_close(
            named[key_map[their_name]].grad, parameter.grad, rtol=1e-4, atol=1e-5 * scale
        )
    assert with_gradient == set(named)
    reference.eval()
    head.eval()
    with torch.no_grad():
        theirs = reference(source, target, [0, 0, 0], 0, is_train=False, reverse=False)
        torch.testing.assert_close(head({"rgb": source}).logits["verb"], theirs[1])
        torch.testing.assert_close(head({"rgb": target}).logits["verb"], theirs[6])
