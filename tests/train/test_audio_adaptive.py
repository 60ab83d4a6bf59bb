"""Audio-Adaptive parts: loss weights and losses against hand-computed values and the reference
code, the audio classifier (both paths), the encoder, the recognizer and the transformer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avda.errors import ConfigError
from avda.train.audio_adaptive.audio_classifier import (
    MASKED_ROWS,
    PooledAudioClassifier,
    SpectrogramAudioClassifier,
    augment_spectrogram,
    pseudo_absent_labels,
    train_spectrogram_audio_classifier,
)
from avda.train.audio_adaptive.encoder import (
    AudioAdaptiveEncoder,
    AudioChannelAttention,
    as_tokens,
    group_clips,
    one_clip_per_segment,
)
from avda.train.audio_adaptive.losses import (
    absent_activity_loss,
    audio_balanced_loss,
    audio_balanced_weights,
    class_balanced_weights,
    effective_number_weights,
    encoder_loss,
    recognizer_loss,
)
from avda.train.audio_adaptive.recognizer import SOURCE, TARGET, AudioInfusedRecognizer
from avda.train.audio_adaptive.transformer import TransformerEncoder

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ weights
def test_effective_number_weights_by_hand():
    # (1 - b) / (1 - b^n) with b = 0.5: n = 3 -> 0.5 / 0.875, n = 1 -> 1, n = 0 -> 0
    np.testing.assert_allclose(
        effective_number_weights(np.array([3, 1, 0]), 0.5), [0.5 / 0.875, 1.0, 0.0]
    )
    np.testing.assert_allclose(class_balanced_weights(np.array([3, 1, 0]), 0.5), [
        2 * (4 / 7) / (4 / 7 + 1), 2 * 1 / (4 / 7 + 1), 0.0
    ])  # fmt: skip
    with pytest.raises(ConfigError, match="beta"):
        effective_number_weights(np.array([1]), 1.0)


def test_audio_balanced_weights_by_hand():
    # class 0: 3 samples in clusters {0, 0, 1}; class 1: one sample; beta = 0.5
    # class weights: e = [4/7, 1] normalised to sum 2 -> w0 = 8/11, w1 = 14/11
    # class 0 clusters: e(2) = 2/3, e(1) = 1 -> (2/3, 1) / (5/3) * K=2 * w0 = (0.4, 0.6) * 2 * 8/11
    weights, table = audio_balanced_weights(
        np.array([0, 0, 0, 1]), np.array([0, 0, 1, 0]), num_classes=2, beta=0.5
    )
    w0, w1 = 8 / 11, 14 / 11
    expected = [0.4 * 2 * w0, 0.4 * 2 * w0, 0.6 * 2 * w0, w1]
    np.testing.assert_allclose(weights, expected)
    assert table[0] == pytest.approx({0: 0.8 * w0, 1: 1.2 * w0}) and table[1] == pytest.approx(
        {0: w1}
    )


def _reference_weights(labels, clusters, num_classes, beta):
    """A line-by-line transcription of dataloader_audio_adaptive_encoder.py (8 -> C)."""
    cluster_num = [int(clusters[labels == c].max()) + 1 for c in range(num_classes)]
    cls_wise = [[[] for _ in range(cluster_num[i])] for i in range(num_classes)]
    num_per_cls = np.zeros((num_classes,))
    for label, cluster in zip(labels, clusters, strict=True):
        num_per_cls[label] += 1
        cls_wise[label][cluster].append(0)
    effective_num = 1.0 - np.power(beta, num_per_cls)
    label_weights = (1.0 - beta) / effective_num
    label_weights = label_weights / np.sum(label_weights) * float(num_classes)
    weights = []
    for i in range(num_classes):
        weights.append([])
        for jj in range(cluster_num[i]):
            weights[i].append((1.0 - beta) / (1.0 - np.power(beta, len(cls_wise[i][jj]))))
    for i in range(num_classes):
        total = np.sum(weights[i])
        for jj in range(cluster_num[i]):
            weights[i][jj] = weights[i][jj] / total * cluster_num[i] * label_weights[i]
    return np.array([weights[y][k] for y, k in zip(labels, clusters, strict=True)])


def test_audio_balanced_weights_match_the_reference_code():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 300)
    clusters = rng.integers(0, 4, 300)
    for c in range(8):  # every class has cluster ids 0..k-1 in use, as k-means gives
        members = np.flatnonzero(labels == c)
        clusters[members[: clusters[members].max() + 1]] = np.arange(clusters[members].max() + 1)
    weights, _ = audio_balanced_weights(labels, clusters, 8, 0.999)
    np.testing.assert_allclose(weights, _reference_weights(labels, clusters, 8, 0.999))


def test_audio_balanced_weights_refuse_missing_clusters():
    with pytest.raises(ConfigError, match="no audio cluster"):
        audio_balanced_weights(np.array([0, 1]), np.array([0, -1]), 2, 0.9)


# ------------------------------------------------------------------------------ losses
def test_absent_activity_loss_by_hand():
    probabilities = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    logits = probabilities.log()
    absent = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    first = -2 * math.log(1 - 0.25 + 1e-7)
    second = -math.log(1 - 0.1 + 1e-7)
    assert float(absent_activity_loss(logits, absent)) == pytest.approx((first + second) / 2)


def test_audio_balanced_and_encoder_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    weights = torch.tensor([0.5, 2.0])
    ce = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0))]
    expected = (0.5 * ce[0] + 2.0 * ce[1]) / 2
    assert float(audio_balanced_loss(logits, labels, weights)) == pytest.approx(expected)
    absent = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    parts = encoder_loss(logits, labels, weights, logits, absent, absent_weight=0.01)
    assert float(parts["loss"]) == pytest.approx(
        expected + 0.01 * float(absent_activity_loss(logits, absent))
    )


def test_recognizer_loss_is_the_reference_formula():
    torch.manual_seed(0)
    source, target, audio = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    audio_visual = torch.randn(4, 3, 5)
    labels, pseudo = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 0, 1])
    parts = recognizer_loss(source, labels, target, pseudo, audio, audio_visual)
    per_clip = labels.repeat_interleave(3)  # labels.unsqueeze(1).repeat(1, 5).view(b * 5)
    expected = (F.cross_entropy(source, labels) + F.cross_entropy(target, pseudo)) / 2 + (
        F.cross_entropy(audio, labels)
        + F.cross_entropy(audio_visual.reshape(12, 5), per_clip) * 0.2
    ) * 0.1
    assert float(parts["loss"]) == pytest.approx(float(expected))


def test_pseudo_absent_labels():
    probabilities = np.array([[0.1, 0.5, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]])
    absent = pseudo_absent_labels(probabilities, 2)
    np.testing.assert_array_equal(absent, [[1, 0, 1, 0], [1, 1, 0, 0]])  # ties: lower index
    assert absent.sum(1).tolist() == [2, 2]
    with pytest.raises(ConfigError, match="absent_classes"):
        pseudo_absent_labels(probabilities, 4)


# ------------------------------------------------------------------------------ audio classifier
def test_augment_spectrogram_noise_and_masked_rows():
    generator = torch.Generator().manual_seed(0)
    spectrogram = torch.ones(6, 1, 40, 7)
    out = augment_spectrogram(spectrogram, generator)
    for example in out[:, 0]:
        zero_rows = (example == 0).all(dim=1).nonzero().flatten().tolist()
        assert len(zero_rows) == MASKED_ROWS
        assert zero_rows == list(range(zero_rows[0], zero_rows[0] + MASKED_ROWS))
        assert zero_rows[0] < 40 - 1 - MASKED_ROWS
        kept = example[(example != 0).any(dim=1)]
        assert (kept - 1).abs().max() <= 0.05
    assert augment_spectrogram(torch.ones(2, 40, 7), generator).shape == (2, 40, 7)


def _tiny_spectrograms(count: int, seed: int = 0):
    """Two classes: energy in low or high frequency rows, z-scored like the reference."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    x = torch.randn(count, 1, 33, 32, generator=generator) * 0.3
    rows = torch.arange(33)
    band = torch.where(labels[:, None] == 0, rows[None] < 12, rows[None] > 20)  # (N, F)
    x = x + band[:, None, :, None].float() * 2.0
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-9)
    return x, labels


@pytest.fixture(scope="module")
def audio_backbone():
    from avda.extract.backbones import create

    torch.manual_seed(0)
    return create("audio_resnet18", modality="audio").eval()


def test_spectrogram_classifier_trains_layer4_and_fc_only(audio_backbone):
    spectrograms, labels = _tiny_spectrograms(24)
    before = {k: v.clone() for k, v in audio_backbone.state_dict().items()}
    model = train_spectrogram_audio_classifier(
        audio_backbone, spectrograms, labels, num_classes=2, epochs=3, lr=1e-3, batch_size=8
    )
    for key, value in audio_backbone.state_dict().items():  # the backbone is not touched
        torch.testing.assert_close(value, before[key])
    stem = dict(model.stem.named_parameters())
    assert all(not p.requires_grad for p in stem.values())
    torch.testing.assert_close(stem["0.weight"], before["conv1.weight"])  # stem stays frozen
    assert not torch.equal(model.layer4[0].conv1.weight, before["layer4.0.conv1.weight"])
    logits, embedding = model(spectrograms)
    assert logits.shape == (24, 2) and embedding.shape == (24, 512)
    assert (logits.argmax(1) == labels).float().mean() >= 0.75
    maps = model.layer3(spectrograms)
    assert maps.shape == (24, 256, 3, 2)  # layer3 at 1/16 resolution
    torch.testing.assert_close(model.forward_layer3(maps)[0], logits)


def test_spectrogram_classifier_layer4_init_and_layer3_inputs(audio_backbone):
    pretrained = SpectrogramAudioClassifier(audio_backbone, 3, layer4_init="pretrained")
    torch.testing.assert_close(
        pretrained.layer4[0].conv1.weight, audio_backbone.layer4[0].conv1.weight
    )
    random = SpectrogramAudioClassifier(audio_backbone, 3)  # the reference's actual behaviour
    assert not torch.equal(random.layer4[0].conv1.weight, audio_backbone.layer4[0].conv1.weight)
    spectrograms, labels = _tiny_spectrograms(8)
    maps = random.layer3(spectrograms)
    model = train_spectrogram_audio_classifier(
        audio_backbone, maps, labels, num_classes=2, input_kind="layer3", epochs=1
    )
    assert model.forward_layer3(maps)[0].shape == (8, 2)
    with pytest.raises(ConfigError, match="lacks"):
        SpectrogramAudioClassifier(torch.nn.Linear(2, 2), 2)
    with pytest.raises(ConfigError, match="one label each"):
        train_spectrogram_audio_classifier(audio_backbone, maps, labels[:3], num_classes=2)


def test_pooled_audio_classifier_averages_clips():
    model = PooledAudioClassifier(6, 4, hidden_dim=5)
    x = torch.randn(3, 2, 6)
    logits, embedding = model(x)
    assert logits.shape == (3, 4) and embedding.shape == (3, 5)
    torch.testing.assert_close(model(x.mean(1, keepdim=True))[0], logits)


# ------------------------------------------------------------------------------ transformer
def _reference_attention(x, to_qkv, to_out, heads):
    """vit.py's Attention.forward with einsum, for a parity check."""
    b, n, _ = x.shape
    q, k, v = to_qkv(x).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, -1).permute(0, 2, 1, 3) for t in (q, k, v))
    dots = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
    out = torch.einsum("bhij,bhjd->bhid", dots.softmax(dim=-1), v)
    return to_out(out.permute(0, 2, 1, 3).reshape(b, n, -1))


def test_transformer_matches_the_reference_block():
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, depth=2, heads=4, head_dim=8, mlp_dim=32, dropout=0.0).eval()
    x = torch.randn(3, 5, 16)
    expected = x
    for layer in encoder.layers:
        attention = layer["attention"]
        expected = expected + _reference_attention(
            layer["attention_norm"](expected), attention.to_qkv, attention.to_out, 4
        )
        expected = expected + layer["mlp"](layer["mlp_norm"](expected))
    torch.testing.assert_close(encoder(x), expected)


@pytest.mark.parametrize("training", [False, True])
def test_transformer_computes_the_last_layer_for_the_kept_rows_only(training):
    # queries=n: the last layer's attention and MLP run for the first n rows only; the values,
    # the dropout masks of those rows and the random stream afterwards are the full forward's.
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, depth=2, heads=4, head_dim=8, mlp_dim=32, dropout=0.3)
    encoder.train(training)
    x = torch.randn(3, 7, 16)
    outputs, grads, after = [], [], []
    for queries in (None, 2):
        encoder.zero_grad()
        torch.manual_seed(1)
        out = encoder(x, queries=queries)[:, :2] if queries else encoder(x)[:, :2]
        after.append(torch.rand(4))
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append([p.grad.clone() for p in encoder.parameters()])
    assert encoder(x, queries=2).shape == (3, 2, 16)
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(after[1], after[0])
    for kept, full in zip(*grads, strict=True):
        torch.testing.assert_close(kept, full)
    if training:  # dropout is on: another seed gives other masks (the check above can fail)
        torch.manual_seed(2)
        assert not torch.allclose(encoder(x, queries=2), outputs[0])


# ------------------------------------------------------------------------------ encoder
def _tiny_encoder(**kwargs):
    return AudioAdaptiveEncoder(
        12, 6, 4, attention_dim=16, depth=2, heads=2, head_dim=8, mlp_dim=16, bottleneck=8,
        **kwargs,
    )  # fmt: skip


def test_attention_has_no_positional_embedding():
    attention = AudioChannelAttention(6, 12, dim=16, depth=1, heads=2, head_dim=8, mlp_dim=16)
    assert not [n for n, _ in attention.named_parameters() if "pos" in n]
    attention.eval()
    tokens = torch.randn(2, 5, 6)
    permuted = tokens[:, torch.randperm(5)]  # no position information: order does not matter
    torch.testing.assert_close(attention(tokens), attention(permuted), rtol=1e-5, atol=1e-5)


def test_encoder_pooled_and_spatial_modes():
    torch.manual_seed(0)
    pooled = _tiny_encoder().eval()
    visual, audio = torch.rand(3, 5, 12), torch.randn(3, 2, 6)
    out = pooled(visual, audio)
    assert out.logits.shape == (3, 5, 4) and out.features.shape == (3, 5, 12)
    # The bottleneck starts as the identity: features are the gated inputs.
    torch.testing.assert_close(out.features, visual * out.gate[:, None, :])
    probabilities = pooled.predict(visual, audio)
    torch.testing.assert_close(probabilities, out.logits.softmax(-1).mean(1))

    spatial = _tiny_encoder(spatial=True).eval()
    maps = torch.rand(3, 5, 12, 4, 4)
    audio_maps = torch.randn(3, 1, 6, 2, 3)
    assert as_tokens(audio_maps).shape == (3, 6, 6)
    out = spatial(maps, audio_maps)
    gated = maps * out.gate[:, None, :, None, None]
    torch.testing.assert_close(out.features, gated.amax(dim=(-2, -1)))  # max pool for R
    expected_logits = spatial.classifier(gated.mean(dim=(-2, -1)))  # average pool for fc
    torch.testing.assert_close(out.logits, expected_logits)


def test_one_clip_per_segment():
    generator = torch.Generator().manual_seed(0)
    visual = torch.arange(2 * 5 * 3).reshape(2, 5, 3).float()
    chosen = one_clip_per_segment(visual, generator)
    assert chosen.shape == (2, 1, 3)
    for b in range(2):
        assert any(torch.equal(chosen[b, 0], visual[b, k]) for k in range(5))


# ------------------------------------------------------------------------------ recognizer
def _tiny_recognizer():
    return AudioInfusedRecognizer(
        12, 7, 4, delegate_dim=10, visual_hidden=6, fc_hidden=9, dim=16, depth=2, heads=2,
        head_dim=8, mlp_dim=16,
    )  # fmt: skip


def test_recognizer_shapes_domain_embedding_and_gradients():
    torch.manual_seed(0)
    recognizer = _tiny_recognizer()
    visual, audio = torch.randn(4, 5, 12), torch.randn(4, 7)
    recognizer.eval()
    source, target = recognizer(visual, audio, SOURCE), recognizer(visual, audio, TARGET)
    assert source.logits.shape == (4, 4) and source.audio_logits.shape == (4, 4)
    assert source.audio_visual_logits.shape == (4, 5, 4)
    assert not torch.allclose(source.logits, target.logits)  # the domain row matters
    torch.testing.assert_close(source.audio_logits, target.audio_logits)  # audio path has no E^d
    recognizer.train()
    out = recognizer(visual, audio, SOURCE)
    parts = recognizer_loss(
        out.logits, torch.tensor([0, 1, 2, 3]), out.logits, torch.tensor([1, 1, 1, 1]),
        out.audio_logits, out.audio_visual_logits,
    )  # fmt: skip
    parts["loss"].backward()
    missing = [n for n, p in recognizer.named_parameters() if p.grad is None]
    assert missing == ["domain_embedding"] or not missing  # only row SOURCE was used
    assert (
        recognizer.domain_embedding.grad is None
        or recognizer.domain_embedding.grad[TARGET].abs().sum() == 0
    )


def test_class_token_is_a_mixture_of_delegates():
    torch.manual_seed(0)
    recognizer = _tiny_recognizer().eval()
    visual, audio = torch.randn(2, 3, 12), torch.randn(2, 7)
    out = recognizer(visual, audio, TARGET)
    mixture = (out.audio_visual_logits.softmax(-1) @ recognizer.delegates).mean(1)  # z_cls
    tokens = torch.cat(
        [
            recognizer.audio_token(mixture)[:, None],
            recognizer.visual_token(visual) + recognizer.domain_embedding[TARGET],
        ],
        dim=1,
    )
    expected = recognizer.head(recognizer.transformer(tokens)[:, 0])
    torch.testing.assert_close(out.logits, expected)


def test_per_clip_class_tokens_are_the_flow_recognizer():
    # EPIC-flow-audio/train_recognizer.py omits the mean over clips: K class tokens, then the
    # K visual tokens; the output is token 0 (the first clip's class token).
    torch.manual_seed(0)
    recognizer = AudioInfusedRecognizer(
        12, 7, 4, delegate_dim=8, dim=16, depth=1, heads=2, head_dim=8, mlp_dim=16,
        class_tokens="per-clip",
    ).eval()  # fmt: skip
    visual, audio = torch.randn(2, 3, 12), torch.randn(2, 7)
    out = recognizer(visual, audio, SOURCE)
    per_clip = out.audio_visual_logits.softmax(-1) @ recognizer.delegates  # (2, 3, 8)
    tokens = torch.cat(
        [
            recognizer.audio_token(per_clip),
            recognizer.visual_token(visual) + recognizer.domain_embedding[SOURCE],
        ],
        dim=1,
    )
    assert tokens.shape == (2, 6, 16)
    expected = recognizer.head(recognizer.transformer(tokens)[:, 0])
    torch.testing.assert_close(out.logits, expected)
    with pytest.raises(ValueError, match="class_tokens"):
        AudioInfusedRecognizer(12, 7, 4, class_tokens="max")  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [25, 7, 10])
def test_group_clips_averages_consecutive_groups_of_nearly_equal_size(count):
    """The K clips are cut at floor(i K / 5) (sizes differ by at most one) and averaged, maps'
    trailing axes kept; 5 clips or fewer, or clips=0, as cached."""
    x = torch.randn(3, count, 4, 2)
    bounds = [int(np.floor(i * count / 5)) for i in range(6)]
    pieces = [x.numpy()[:, a:b].mean(axis=1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    expected = np.stack(pieces, 1)
    sizes = np.diff(bounds)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == count
    np.testing.assert_allclose(group_clips(x, 5).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert group_clips(x, 0) is x
    small = torch.randn(3, 5, 4)
    assert group_clips(small, 5) is small and group_clips(small[:, :1], 5).shape == (3, 1, 4)
