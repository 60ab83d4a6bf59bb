"""TA3N against the authors' EPIC-100 code (``jonmun/EPIC-KITCHENS-100_UDA_TA3N``, 29e8e1f).

Golden numbers: the authors' ``VideoModel`` (EPIC-100 configuration: TBN ``ALL`` 3072-d input,
5 segments, trn-m, add_fc=1, fc_dim=512, TransAttn, verb 97 / noun 300, dropout 0 so that the
numbers are deterministic) with every parameter set by :func:`_value` from its *authors'* name,
the loss assembled as ``main.py train()`` does (``0.5 (CE_v + CE_n) + sum of the three domain
CEs + 0.003 * 0.5 (AE_v + AE_n)``) at progress 0.37 of 30 epochs with ``--dann_warmup``.
Regenerate with ``AVDA_TA3N_REFERENCE=<checkout>``: ``test_live_parity`` then also compares
against the code itself (not copied here).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import types

import numpy as np
import pytest
import torch

from avda import protocols
from avda.errors import CheckpointError, ConfigError
from avda.train import heads
from avda.train.data import Task
from avda.train.heads.ta3n import (
    authors_key_map,
    convert_authors_state_dict,
    snippet_indices,
)
from avda.train.loop import _make_optimizer

torch.set_num_threads(1)
MODALITIES = ("rgb", "flow", "audio")
EPIC_TASKS = [Task("verb", 97), Task("noun", 300)]
PROGRESS, EPOCHS = 0.37, 30

# From the authors' code (see the module docstring).
GOLDEN = {
    "loss": 7.318221092224121,
    "classification": 5.223156929016113,
    "adversarial_relation": 0.6995428800582886,
    "adversarial_video": 0.6870124936103821,
    "adversarial_frame": 0.6841862797737122,
    "attentive_entropy": 8.107558250427246,
}
GOLDEN_ATTENTION_ROW0 = [
    0.3075979948043823,
    0.30772098898887634,
    0.30758199095726013,
    0.3076019883155823,
]
GOLDEN_GRADIENT_SUMS = {  # sum |grad| per authors' parameter
    "fc_feature_shared_source.weight": 2501.3692288105335,
    "fc_classifier_video_verb_source.weight": 640.7794150591865,
    "relation_domain_classifier_all.2.0.weight": 8.23236440637152,
    "fc_feature_domain.weight": 9.787619922410139,
    "fc_classifier_domain_video.bias": 0.09074582159519196,
    "TRN.fc_fusion_scales.0.1.weight": 177.58720749411003,
}
GOLDEN_EVAL_VERB_ROW0 = [
    1.152748703956604,
    1.3927682638168335,
    1.3307446241378784,
    0.9789444804191589,
]
GOLDEN_EVAL_NOUN_SUM = 10.119155403226614
AUTHORS_PARAMETERS = 4705574  # all of VideoModel's, unused modules included
AUTHORS_LOSS_PATH_PARAMETERS = 4106649  # those that receive a gradient


def _value(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    offset = sum(map(ord, name)) % 101
    values = 0.05 * torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + offset)
    return values.float().reshape(shape)


def _inputs(batch: int, shift: float) -> torch.Tensor:
    n = torch.arange(batch * 5 * 3072, dtype=torch.float64)
    x = torch.sin(n * 0.011 + shift) + 0.5 * torch.cos(n * 0.007)
    return x.float().reshape(batch, 5, 3072)


def _split(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {m: x[..., i * 1024 : (i + 1) * 1024] for i, m in enumerate(MODALITIES)}


def _epic_head(**overrides):
    """The EPIC-100 script's TA3N (``use_bn=none``) unless ``overrides`` say otherwise."""
    return heads.create(
        "ta3n",
        inputs={m: (5, 1024) for m in MODALITIES},
        tasks=EPIC_TASKS,
        overrides={"use_bn": "none", **overrides},
    )


def test_parameter_count_matches_the_authors_loss_path():
    head = _epic_head()
    assert sum(p.numel() for p in head.parameters()) == AUTHORS_LOSS_PATH_PARAMETERS
    assert AUTHORS_PARAMETERS > AUTHORS_LOSS_PATH_PARAMETERS  # their unused modules


def test_golden_loss_gradients_and_outputs():
    head = _epic_head(frame_dropout=0.0, video_dropout=0.0)
    mapping = authors_key_map(5, ["verb", "noun"])
    ours = dict(head.named_parameters())
    with torch.no_grad():
        for theirs, name in mapping.items():
            ours[name].copy_(_value(theirs, ours[name].shape))
    head.train()
    labels = {"verb": torch.tensor([3, 50, 96]), "noun": torch.tensor([0, 299, 123])}
    losses = head.training_step(_split(_inputs(3, 0.0)), labels, _split(_inputs(4, 1.0)), PROGRESS)
    for key, expected in GOLDEN.items():
        assert float(losses[key].detach()) == pytest.approx(expected, rel=2e-5), key
    losses["loss"].backward()
    for theirs, expected in GOLDEN_GRADIENT_SUMS.items():
        gradient = ours[mapping[theirs]].grad.double().abs().sum()
        assert float(gradient) == pytest.approx(expected, rel=1e-4), theirs
    head.eval()
    with torch.no_grad():
        output = head(_split(_inputs(3, 0.0)))
    torch.testing.assert_close(
        output.extras["attention"][0], torch.tensor(GOLDEN_ATTENTION_ROW0), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        output.logits["verb"][0, :4], torch.tensor(GOLDEN_EVAL_VERB_ROW0), rtol=1e-5, atol=1e-5
    )
    assert float(output.logits["noun"].double().sum()) == pytest.approx(
        GOLDEN_EVAL_NOUN_SUM, rel=1e-4
    )


# The authors' VideoModel with use_bn="AdaBN" (bn_shared_S / bn_shared_T), otherwise as above.
GOLDEN_ADABN = {"loss": 7.329265594482422, "classification": 5.235468864440918}
GOLDEN_ADABN_GRADIENT_SUMS = {
    "fc_feature_shared_source.weight": 573.4793499632262,
    "bn_shared_T.weight": 0.01169330139084579,
}
GOLDEN_ADABN_EVAL_VERB_ROW0 = {
    "source": [1.146251916885376, 1.4087823629379272, 1.3657646179199219, 1.0253053903579712],
    "target": [1.2718298435211182, 1.5356965065002441, 1.4662359952926636, 1.0773427486419678],
}
GOLDEN_ADABN_TARGET_NOUN_SUM = 14.851687520742416


def test_golden_adabn_normalises_each_domain_with_its_own_statistics():
    """The authors' ``use_bn=AdaBN``: one BatchNorm per domain after the shared layer; the
    running statistics of one training step then give each domain's test outputs."""
    head = _epic_head(frame_dropout=0.0, video_dropout=0.0, use_bn="AdaBN")
    mapping = authors_key_map(5, ["verb", "noun"], use_bn=True)
    state = head.state_dict()
    with torch.no_grad():
        for theirs, name in mapping.items():
            if not theirs.endswith(("running_mean", "running_var", "num_batches_tracked")):
                state[name].copy_(_value(theirs, state[name].shape))
    head.train()
    labels = {"verb": torch.tensor([3, 50, 96]), "noun": torch.tensor([0, 299, 123])}
    source, target = _inputs(3, 0.0), _inputs(4, 1.0)
    losses = head.training_step(_split(source), labels, _split(target), PROGRESS)
    for key, expected in GOLDEN_ADABN.items():
        assert float(losses[key].detach()) == pytest.approx(expected, rel=2e-5), key
    losses["loss"].backward()
    ours = dict(head.named_parameters())
    for theirs, expected in GOLDEN_ADABN_GRADIENT_SUMS.items():
        gradient = ours[mapping[theirs]].grad.double().abs().sum()
        assert float(gradient) == pytest.approx(expected, rel=1e-4), theirs
    head.eval()
    for domain, x in (("source", source), ("target", target)):
        head.before_evaluation(types.SimpleNamespace(name=f"{domain}_test"), None)
        with torch.no_grad():
            output = head(_split(x))
        torch.testing.assert_close(
            output.logits["verb"][0, :4],
            torch.tensor(GOLDEN_ADABN_EVAL_VERB_ROW0[domain]),
            rtol=1e-5,
            atol=1e-5,
        )
    assert float(output.logits["noun"].double().sum()) == pytest.approx(
        GOLDEN_ADABN_TARGET_NOUN_SUM, rel=1e-4
    )


def test_defaults_are_the_epic100_scripts():
    config = heads.config_class("ta3n").from_dict({})
    assert (config.epochs, config.batch_size, config.target_batch_size) == (30, 128, 207)
    assert (config.optimizer, config.lr, config.momentum, config.nesterov) == (
        "sgd",
        3e-3,
        0.9,
        True,
    )
    assert (config.weight_decay, config.grad_clip, config.lr_gamma) == (1e-4, 20.0, 0.1)
    assert (config.frame_dropout, config.video_dropout, config.shared_dim) == (0.5, 0.5, 512)
    assert config.beta == (0.75, 0.75, 0.5) and config.attentive_entropy_weight == 0.003
    assert config.beta_ramp_gamma == 1.0 and config.beta_warmup and config.init_std == 0.001
    # The script's use_bn=none is the protocol's; avda's default is the authors' AdaBN option.
    assert config.use_bn == "AdaBN"
    _, protocol = protocols.get("ta3n-epic100").resolve("ta3n")
    _, baseline = protocols.get("ta3n-epic100").resolve("source-only")
    assert protocol["use_bn"] == baseline["use_bn"] == "none"


def test_learning_rate_steps_match_the_authors_epochs():
    """The authors divide by 10 when (1-based) epoch 10 and 20 start; avda's loop steps after
    each finished epoch, so ``lr_steps = (9, 19)`` gives the same lr in every epoch.
    """
    head = _epic_head()
    config = head.config
    optimizer, scheduler = _make_optimizer(head, config)
    ours = []
    for _ in range(config.epochs):
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: only keeps the scheduler's call order
        scheduler.step()
    authors, lr = [], 3e-3
    for epoch in range(1, 31):
        if epoch in (10, 20):
            lr /= 10
        authors.append(lr)
    np.testing.assert_allclose(ours, authors, rtol=1e-9)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]


def test_beta_schedule_is_the_epic100_warmup():
    head = _epic_head()
    # the authors' p starts at 1/epochs: 0.75 * (2 / (1 + e^(-1/30)) - 1) = 0.0125 (log: 0.012)
    beta = head.beta(0.0)
    assert beta == pytest.approx(tuple(b * math.tanh(1 / 60) for b in (0.75, 0.75, 0.5)))
    assert head.beta(0.5)[2] == pytest.approx(0.5 * math.tanh((0.5 + 1 / 30) / 2))
    constant = _epic_head(beta_warmup=False)
    assert constant.beta(0.3) == (0.75, 0.75, 0.5)


def _authors_betas(args_beta, epochs, steps, ramp_gamma, warmup):
    """The beta of every step in both authors' ``main.py``, transcribed: ``train()`` gets
    ``args.beta`` each epoch; per step ``p = (i + epoch * len) / (epochs * len)`` (epoch from 1),
    ``beta_dann = 2 / (1 + exp(-gamma p)) - 1`` (original: gamma 10; EPIC-100: 1.0), ``beta =
    [beta_dann if beta[i] < 0 else beta[i] ...]`` (the list is rebound, so a replaced entry
    stays for the epoch), and with EPIC-100's ``--dann_warmup`` ``beta_dann * beta``."""
    seen = []
    for epoch in range(1, epochs + 1):
        beta = list(args_beta)
        for i in range(steps):
            p = float(i + epoch * steps) / (epochs * steps)
            beta_dann = 2.0 / (1.0 + np.exp(-ramp_gamma * p)) - 1
            beta = [beta_dann if beta[j] < 0 else beta[j] for j in range(len(beta))]
            seen.append([beta_dann * b for b in beta] if warmup else beta)
    return seen


@pytest.mark.parametrize(
    ("ramp_gamma", "warmup", "ramped", "args_beta"),
    [
        (10.0, False, ("relation", "frame"), (-1, 0.75, -1)),  # the original repository
        (1.0, True, ("video",), (0.75, -1, 0.5)),  # the EPIC-100 code with --dann_warmup
    ],
)
def test_ramped_beta_is_the_authors_negative_beta(ramp_gamma, warmup, ramped, args_beta):
    epochs, steps = 4, 3
    head = _epic_head(
        epochs=epochs,
        beta=tuple(abs(b) for b in args_beta),
        beta_ramp_gamma=ramp_gamma,
        beta_warmup=warmup,
        ramped_beta=ramped,
    )
    ours = [head.beta(k / (epochs * steps)) for k in range(epochs * steps)]
    authors = _authors_betas(args_beta, epochs, steps, ramp_gamma, warmup)
    np.testing.assert_allclose(np.array(ours), np.array(authors), rtol=1e-12)
    if not warmup:  # the original: constant within an epoch, epoch 1 at p = 1/4
        assert ours[0] == ours[2] != ours[3]
        assert ours[0][0] == pytest.approx(2 / (1 + math.exp(-2.5)) - 1)  # 0.848


def test_ramped_beta_names_a_level():
    with pytest.raises(ConfigError, match=r"ramped_beta: expected levels of relation, video, fr"):
        heads.config_class("ta3n").from_dict({"ramped_beta": ("video", "clip")})


def test_snippet_selection():
    assert snippet_indices(25, 5) == [2, 7, 12, 17, 22]
    assert snippet_indices(5, 5) == [0, 1, 2, 3, 4]
    assert snippet_indices(3, 5) == [0, 1, 2, 2, 2]  # short: repeat the last, as TSN
    config = heads.config_class("ta3n").from_dict({})
    cls = heads.HEADS.get("ta3n")
    assert cls.input_clips(config, 25) == [2, 7, 12, 17, 22]
    assert cls.input_clips(config, 5) is None
    # a head built on all 25 snippets selects them itself
    full = heads.create("ta3n", inputs={"rgb": (25, 8)}, tasks=[Task("verb", 3)]).eval()
    picked = heads.create("ta3n", inputs={"rgb": (5, 8)}, tasks=[Task("verb", 3)]).eval()
    picked.load_state_dict(full.state_dict())
    x = torch.randn(2, 25, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            full({"rgb": x}).logits["verb"],
            picked({"rgb": x[:, [2, 7, 12, 17, 22]]}).logits["verb"],
        )


def test_concatenation_order_and_errors():
    head = heads.create(
        "ta3n", inputs={"audio": (5, 3), "rgb": (5, 4), "flow": (5, 2)}, tasks=[Task("verb", 3)]
    )
    assert head.modalities == ["rgb", "flow", "audio"] and head.shared.in_features == 9
    with pytest.raises(ConfigError, match="same number of clips"):
        heads.create("ta3n", inputs={"rgb": (5, 4), "audio": (1, 4)}, tasks=[Task("verb", 3)])
    with pytest.raises(ConfigError, match="num_segments must be >= 2"):
        heads.create(
            "ta3n", inputs={"rgb": (5, 4)}, tasks=[Task("verb", 3)], overrides={"num_segments": 1}
        )


def test_authors_checkpoint_conversion():
    head = _epic_head()
    theirs = {
        f"module.{k}": _value(k, head.state_dict()[v].shape)
        for k, v in authors_key_map(5, ["verb", "noun"]).items()
    }
    theirs["module.fc_feature_source.weight"] = torch.zeros(512, 512)  # unused by TA3N: ignored
    head.load_state_dict(convert_authors_state_dict(theirs, head))
    torch.testing.assert_close(
        head.shared.weight, _value("fc_feature_shared_source.weight", (512, 3072))
    )
    missing = dict(theirs)
    del missing["module.fc_feature_domain.weight"]
    with pytest.raises(CheckpointError, match="fc_feature_domain.weight"):
        convert_authors_state_dict(missing, head)
    wrong = dict(theirs)
    wrong["module.fc_classifier_video_noun_source.weight"] = torch.zeros(10, 256)
    with pytest.raises(CheckpointError, match=r"shape \(10, 256\)"):
        convert_authors_state_dict(wrong, head)


@pytest.fixture
def float64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def _authors_model(use_bn: str, use_attn: str = "TransAttn"):
    """The authors' ``VideoModel`` in the EPIC-100 configuration (dropout 0) and their
    ``loss`` module, from ``AVDA_TA3N_REFERENCE``."""
    path = os.environ["AVDA_TA3N_REFERENCE"]
    if "colorama" not in sys.modules and importlib.util.find_spec("colorama") is None:
        # only used for coloured prints
        stub = types.ModuleType("colorama")
        stub.init = lambda **kwargs: None
        stub.Fore = stub.Back = stub.Style = types.SimpleNamespace(RED="", CYAN="", GREEN="")
        sys.modules["colorama"] = stub
    import builtins

    builtins.torch = torch  # models.py relies on an old `from torch.nn.init import *` export
    sys.path.insert(0, path)
    try:
        models = importlib.import_module("models")
        authors_loss = importlib.import_module("loss")
    finally:
        sys.path.remove(path)
    reference = models.VideoModel(
        [97, 300],
        "video",
        "trn-m",
        "ALL",
        train_segments=5,
        val_segments=5,
        base_model="TBN",
        add_fc=1,
        fc_dim=512,
        dropout_i=0.0,
        dropout_v=0.0,
        partial_bn=False,
        use_bn=use_bn,
        ens_DA="none",
        use_attn=use_attn,
        n_attn=1,
        use_attn_frame="none",
        verbose=False,
        share_params="Y",
    )
    return reference, authors_loss


@pytest.mark.skipif(
    not os.environ.get("AVDA_TA3N_REFERENCE"),
    reason="set AVDA_TA3N_REFERENCE to a checkout of jonmun/EPIC-KITCHENS-100_UDA_TA3N",
)
@pytest.mark.parametrize("use_bn", ["none", "AdaBN"])
def test_live_parity(use_bn, float64):
    """Random weights, dropout 0: loss bit-equal, gradients and test outputs equal; with the
    authors' AdaBN (``use_bn``) also its running statistics and both domains' test outputs.
    In float64: in float32 the sums' other order (source and target in one forward pass) moves
    gradients by up to 3.4e-7 and target logits by 1.6e-5, past float64's tolerances."""
    reference, authors_loss = _authors_model(use_bn)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    head = _epic_head(frame_dropout=0.0, video_dropout=0.0, use_bn=use_bn)
    head.load_state_dict(convert_authors_state_dict(reference.state_dict(), head))
    source = torch.randn(4, 5, 3072, generator=generator)
    target = torch.randn(6, 5, 3072, generator=generator) + 0.3
    labels = {"verb": torch.tensor([1, 5, 96, 0]), "noun": torch.tensor([3, 299, 7, 0])}
    beta = head.beta(PROGRESS)
    reference.train()
    _, out_s, _, domain_s, _, _, out_t, _, domain_t, _ = reference(
        source, target, list(beta), 0, is_train=True, reverse=False
    )
    ce = torch.nn.CrossEntropyLoss()
    total = 0.5 * (ce(out_s[0], labels["verb"]) + ce(out_s[1], labels["noun"]))
    domains = []
    for level in range(3):
        s, t = domain_s[level].reshape(-1, 2), domain_t[level].reshape(-1, 2)
        domains.append(torch.cat([s, t]))
        total = total + ce(domains[-1], torch.cat([torch.zeros(len(s)), torch.ones(len(t))]).long())
    entropy = sum(
        authors_loss.attentive_entropy(torch.cat([out_s[i], out_t[i]]), domains[1]) for i in (0, 1)
    )
    total = total + 0.003 * 0.5 * entropy
    total.backward()
    ours = head.training_step(_split(source), labels, _split(target), PROGRESS)
    ours["loss"].backward()
    assert float(ours["loss"].detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    named = dict(head.named_parameters())
    key_map = authors_key_map(5, ["verb", "noun"], use_bn != "none")
    checked = 0
    for their_name, parameter in reference.named_parameters():
        if parameter.grad is None:
            continue
        our_name = key_map[their_name]
        torch.testing.assert_close(named[our_name].grad, parameter.grad, rtol=1e-4, atol=1e-7)
        checked += 1
    assert checked == len(named)
    if use_bn != "none":  # one training step moved each domain's running statistics
        ours_state, their_state = head.state_dict(), reference.state_dict()
        for their_name, our_name in key_map.items():
            if "running" in their_name:
                torch.testing.assert_close(ours_state[our_name], their_state[their_name])
    reference.eval()
    head.eval()
    with torch.no_grad():
        theirs = reference(source, target, [0, 0, 0], 0, is_train=False, reverse=False)
        head.evaluation_domain = "source"
        mine = head(_split(source)).logits
        head.evaluation_domain = "target"
        mine_target = head(_split(target)).logits
    torch.testing.assert_close(mine["verb"], theirs[1][0])
    torch.testing.assert_close(mine["noun"], theirs[1][1])
    torch.testing.assert_close(mine_target["verb"], theirs[6][0])
    torch.testing.assert_close(mine_target["noun"], theirs[6][1])


def _source_only_head(**overrides):
    """The protocol's source-only (TA3N with use_target=false), dropout 0."""
    head, values = protocols.get("ta3n-epic100").resolve("source-only")
    values = {**values, "frame_dropout": 0.0, "video_dropout": 0.0, **overrides}
    return heads.create(
        head, inputs={m: (5, 1024) for m in MODALITIES}, tasks=EPIC_TASKS, overrides=values
    )


def test_source_only_computes_no_domain_loss():
    """main.py with --use_target none adds neither the domain losses nor the attentive
    entropy: the loss is the classification alone and no discriminator gets a gradient, so
    none counts toward grad_clip's norm."""
    head = _source_only_head()
    assert head.config.use_target is False
    labels = {"verb": torch.tensor([3, 11, 0]), "noun": torch.tensor([1, 2, 299])}
    losses = head.training_step(_split(_inputs(3, 0.0)), labels, _split(_inputs(4, 1.0)), 0.4)
    assert set(losses) == {"loss", "classification"}
    assert float(losses["loss"].detach()) == float(losses["classification"].detach())
    # the loop gives it no target batch (it draws none): the same loss of the source rows
    alone = head.training_step(_split(_inputs(3, 0.0)), labels, None, 0.4)
    assert float(alone["loss"].detach()) == float(losses["loss"].detach())
    losses["loss"].backward()
    for name, parameter in head.named_parameters():
        if "discriminator" in name:
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None, name
    # with the attention on, the relation discriminators are on the classifier's path (as in
    # the authors' code): they get the classification's gradient, the others none
    attentive = _source_only_head(domain_attention=True)
    attentive.training_step(_split(_inputs(3, 0.0)), labels, _split(_inputs(4, 1.0)), 0.4)[
        "loss"
    ].backward()
    for name, parameter in attentive.named_parameters():
        if name.startswith(("frame_discriminator", "video_discriminator")):
            assert parameter.grad is None, name
        elif name.startswith("relation_discriminators"):
            assert parameter.grad is not None, name


def test_use_target_false_refuses_adabn():
    with pytest.raises(ConfigError, match=r"use_target=false .* use_bn=AdaBN .*use_bn=none"):
        heads.create(
            "ta3n",
            inputs={m: (5, 1024) for m in MODALITIES},
            tasks=EPIC_TASKS,
            overrides={"use_target": False},
        )


@pytest.mark.skipif(
    not os.environ.get("AVDA_TA3N_REFERENCE"),
    reason="set AVDA_TA3N_REFERENCE to a checkout of jonmun/EPIC-KITCHENS-100_UDA_TA3N",
)
@pytest.mark.parametrize("use_attn", ["none", "TransAttn"])
def test_live_source_only_is_the_authors_use_target_none(use_attn, float64):
    """script_test_sourceonly.sh (use_target=none; use_attn none, and TransAttn, whose
    attention still reads the relation discriminators): main.py's loss is the classification
    alone; after clip_grad_norm_(20) every parameter's update equals avda's."""
    reference, _ = _authors_model("none", use_attn)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    head = _source_only_head(domain_attention=use_attn != "none")
    head.load_state_dict(convert_authors_state_dict(reference.state_dict(), head))
    source = 3 * torch.randn(4, 5, 3072, generator=generator)
    target = 3 * torch.randn(6, 5, 3072, generator=generator) + 0.3
    labels = {"verb": torch.tensor([1, 5, 96, 0]), "noun": torch.tensor([3, 299, 7, 0])}
    beta = head.beta(PROGRESS)
    reference.train()
    out_s = reference(source, target, list(beta), 0, is_train=True, reverse=False)[1]
    ce = torch.nn.CrossEntropyLoss()
    total = 0.5 * (ce(out_s[0], labels["verb"]) + ce(out_s[1], labels["noun"]))
    total.backward()
    clip = head.config.grad_clip
    assert clip == 20.0
    their_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
    ours = head.training_step(_split(source), labels, _split(target), PROGRESS)
    ours["loss"].backward()
    our_norm = torch.nn.utils.clip_grad_norm_(head.parameters(), clip)
    assert float(ours["loss"].detach()) == pytest.approx(float(total.detach()), rel=1e-9)
    assert float(our_norm) == pytest.approx(float(their_norm), rel=1e-9)
    assert float(their_norm) > clip  # the clip shrinks this step: the norm decides the update
    named = dict(head.named_parameters())
    key_map = authors_key_map(5, ["verb", "noun"], False)
    with_gradient = set()
    for their_name, parameter in reference.named_parameters():
        if parameter.grad is None:
            continue
        with_gradient.add(key_map[their_name])
        torch.testing.assert_close(
            named[key_map[their_name]].grad, parameter.grad, rtol=1e-6, atol=1e-12
        )
    assert with_gradient == {n for n, p in named.items() if p.grad is not None}
