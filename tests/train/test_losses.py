"""Losses and schedules against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from avda.errors import ConfigError
from avda.train.data import Task
from avda.train.heads.mm_sada import correspondence_pairs
from avda.train.heads.rna import rna_loss
from avda.train.layers import (
    dann_annealing,
    grl_ramp,
    relation_subsets,
    reverse_gradient,
)
from avda.train.losses import (
    attentive_entropy,
    classification_loss,
    correspondence_loss,
    domain_adversarial_loss,
    domain_attention,
    entropy,
    gaussian_bandwidth_exponents,
    information_maximisation,
    multi_kernel_mmd,
    relative_norm_alignment,
)

LN2 = math.log(2.0)
# softmax([ln 3, 0]) = (0.75, 0.25)
H_3_1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))


def test_gradient_reversal_sign_and_scale():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.3, -0.6, -0.9]))


def test_schedules():
    assert grl_ramp(0.0) == 0.0
    assert grl_ramp(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    # TA3N's EPIC-100 ramp (-1 * p) at its first step p = 1/30: beta 0.75 -> 0.0125
    assert 0.75 * grl_ramp(1 / 30, 1.0) == pytest.approx(0.75 * math.tanh(1 / 60))  # 0.0125
    assert dann_annealing(0.0) == 1.0
    assert dann_annealing(1.0) == pytest.approx(11**-0.75)  # 0.01 -> 0.00166 (DANN)


def test_entropy_and_domain_attention():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    torch.testing.assert_close(entropy(logits), torch.tensor([LN2, H_3_1]))
    # multi-label: sum of per-class binary entropies; sigmoid(0) = 0.5 -> ln 2 each
    assert float(entropy(torch.zeros(1, 3), multi_label=True)) == pytest.approx(3 * LN2)
    # w = 1 - H: 1 - ln 2 for an undecided discriminator, more for a confident one
    attention = domain_attention(logits.reshape(1, 2, 2))
    assert attention.shape == (1, 2)
    torch.testing.assert_close(attention, torch.tensor([[1 - LN2, 1 - H_3_1]]))


def test_attentive_entropy():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    domain = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    expected = ((1 + H_3_1) * LN2 + (1 + LN2) * H_3_1) / 2
    assert float(attentive_entropy(logits, domain)) == pytest.approx(expected)


def test_bandwidth_family_is_dans():
    exponents = gaussian_bandwidth_exponents()
    assert len(exponents) == 33 and exponents[0] == -8.0 and exponents[-1] == 8.0
    assert exponents[1] - exponents[0] == 0.5
    with pytest.raises(ConfigError, match="step > 0"):
        gaussian_bandwidth_exponents(step=0.0)


def test_multi_kernel_mmd_by_hand():
    source, target = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0]])
    # squared distances 1 (0-1), 9 (0-3), 4 (1-3); gamma = mean over distinct pairs = 14 / 3
    gamma = 14 / 3

    def mmd(scale: float) -> float:
        k = lambda d: math.exp(-d / (gamma * scale))  # noqa: E731
        return (2 + 2 * k(1)) / 4 + 1 - (k(9) + k(4))

    assert float(multi_kernel_mmd(source, target, (0.0,))) == pytest.approx(mmd(1.0))
    two = (mmd(0.5) + mmd(2.0)) / 2  # equal weights beta_u over the kernels 2^-1, 2^1
    assert float(multi_kernel_mmd(source, target, (-1.0, 1.0))) == pytest.approx(two)
    same = torch.randn(6, 3)
    assert float(multi_kernel_mmd(same, same.clone(), gaussian_bandwidth_exponents())) == (
        pytest.approx(0.0, abs=1e-6)
    )
    moved = multi_kernel_mmd(same, same + 3.0, gaussian_bandwidth_exponents())
    assert float(moved) > 0.05
    x = torch.randn(5, 4, requires_grad=True)
    multi_kernel_mmd(x, torch.randn(4, 4), gaussian_bandwidth_exponents()).backward()
    assert torch.isfinite(x.grad).all()  # no NaN from zero distances on the diagonal


def test_rna_is_ratio_of_means_not_mean_of_ratios():
    features_a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # norms 1, 3 -> mean 2
    features_b = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # norms 1, 2 -> mean 1.5
    # ratio of means 4/3 -> (1/3)^2; the mean of per-sample ratios (1.25) would give 1/16
    assert float(relative_norm_alignment(features_a, features_b)) == pytest.approx(1 / 9)
    assert float(relative_norm_alignment(features_a, features_a)) == 0.0
    assert float(relative_norm_alignment(features_a, features_b, radius=4 / 3)) == pytest.approx(0)


def test_rna_pairs_put_the_later_modality_in_the_numerator():
    features = {"rgb": torch.ones(2, 4) * 0.5, "audio": torch.ones(2, 4)}  # norms 1 and 2
    # audio / rgb = 2 -> (2 - 1)^2 = 1 (rgb / audio would give 0.25)
    assert float(rna_loss(features, ["rgb", "audio"], 1.0)) == pytest.approx(1.0)
    three = {**features, "flow": torch.ones(2, 4) * 0.5}
    # pairs (rgb, flow): 0, (rgb, audio): 1, (flow, audio): 1 -> mean 2/3
    assert float(rna_loss(three, ["rgb", "flow", "audio"], 1.0)) == pytest.approx(2 / 3)


def test_information_maximisation():
    assert float(information_maximisation(torch.zeros(2, 2))) == pytest.approx(0.0)
    confident = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])  # certain and diverse
    assert float(information_maximisation(confident)) == pytest.approx(-LN2, abs=1e-6)
    collapsed = torch.tensor([[20.0, -20.0], [20.0, -20.0]])  # certain, one class
    assert float(information_maximisation(collapsed)) == pytest.approx(0.0, abs=1e-6)
    assert float(information_maximisation(torch.zeros(2, 3), multi_label=True)) == pytest.approx(0)


def test_correspondence_labels_and_rotated_negatives():
    features = {"rgb": torch.arange(6.0)[:, None], "flow": torch.arange(6.0)[:, None] + 100}
    pairs, labels = correspondence_pairs(features, ["rgb", "flow"])
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]
    assert pairs[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    # negatives: flow rotated by one within the second half -> from another segment
    assert pairs[:, 1].tolist() == [100, 101, 102, 104, 105, 103]
    pairs, labels = correspondence_pairs({m: f[:3] for m, f in features.items()}, ["rgb", "flow"])
    assert labels.tolist() == [1, 1, 0] and pairs[:, 1].tolist() == [100, 101, 100]
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    assert float(correspondence_loss(logits, torch.tensor([1, 1]))) == pytest.approx(
        (LN2 - math.log(0.75)) / 2
    )


def test_domain_adversarial_and_classification_losses():
    undecided = torch.zeros(3, 2)
    assert float(domain_adversarial_loss(undecided, undecided[:1])) == pytest.approx(LN2)
    # source = 0, target = 1: a discriminator saying "source" for the source is right
    right = domain_adversarial_loss(torch.tensor([[5.0, -5.0]]), torch.tensor([[-5.0, 5.0]]))
    assert float(right) < 1e-3
    # frame-level logits (B, F, 2) are flattened
    assert float(domain_adversarial_loss(torch.zeros(2, 5, 2), torch.zeros(3, 5, 2))) == (
        pytest.approx(LN2)
    )
    tasks = [Task("verb", 2), Task("labels", 3, multi_label=True)]
    loss = classification_loss(
        {"verb": torch.zeros(1, 2), "labels": torch.zeros(1, 3)},
        {"verb": torch.tensor([1]), "labels": torch.tensor([[1.0, 0.0, 1.0]])},
        tasks,
    )
    assert float(loss) == pytest.approx(LN2)  # mean of CE (ln 2) and BCE (ln 2)


def test_relation_subsets_are_ta3ns():
    assert relation_subsets(5, 5) == [(0, 1, 2, 3, 4)]
    assert relation_subsets(5, 4) == [(0, 1, 2, 3), (0, 1, 3, 4), (1, 2, 3, 4)]
    assert relation_subsets(5, 3) == [(0, 1, 2), (0, 2, 4), (1, 2, 4)]
    assert relation_subsets(5, 2) == [(0, 1), (1, 2), (2, 3)]
    assert relation_subsets(3, 2) == [(0, 1), (0, 2), (1, 2)]
