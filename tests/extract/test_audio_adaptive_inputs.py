"""What Audio-Adaptive's recognizer reads, extracted from a real video through the whole path.

- ``slowfast-r50-mmaction-max``: the stored feature is the authors' recognizer input
  (``xiaobai1217/DomainAdaptation`` @96c2f8f, ``EPIC-rgb-audio/train_recognizer.py`` l. 117-121,
  ``test_recognizer.py`` l. 171-175): ``F.adaptive_max_pool3d(x, (1, 1, 1))`` of each pathway's
  ``layer4`` map, ``torch.cat((x_slow, x_fast), dim=1)``; the maps are hooked in the network.
- ``audio-adaptive-224``: the clip is mmaction2's ``CenterCrop(224)`` of the frame resized to
  shorter side 256 (the config's ``val_pipeline``, ``slowfast_r101_8x8x1_256e_kinetics400_rgb2.py``
  l. 59-74; ``CenterCrop``: ``left = (img_w - crop_w) // 2``, ``top = (img_h - crop_h) // 2``,
  vendored ``mmaction/datasets/pipelines/augmentations.py`` l. 1466-1470), written here with
  torchvision from the resized frame, then mmaction2's ``Normalize``.
- A store of average-pooled features is not resumed with max-pooled ones.

One 1-clip segment of ``bigbuckbunny.mp4`` (1280 x 720: 455 x 256 after the resize, an odd
margin, where mmaction2's crop starts one column left of torchvision's ``CenterCrop``); R50 with
random weights (the pooling and the crop do not depend on the weights); float32.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import CenterCrop

from avda.cache import open_cache
from avda.errors import CacheError
from avda.extract import runner, sampling
from avda.extract.decode import VideoDecoder
from avda.extract.sampling import SegmentFrames

pytestmark = pytest.mark.usefixtures("one_thread")

VIDEO = "bigbuckbunny.mp4"
START, STOP = 2.0, 5.0
# mmaction2 img_norm_cfg (the config l. 44-45), on 0-255 RGB
MEAN = torch.tensor([123.675, 116.28, 103.53])
STD = torch.tensor([58.395, 57.12, 57.375])


def _manifest() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "uid": "bbb",
                "video_id": "bigbuckbunny",
                "video_path": VIDEO,
                "domain": "d",
                "split": "test",
                "start_sec": START,
                "stop_sec": STOP,
            }
        ]
    )


def _recipe() -> sampling.Recipe:
    """audio-adaptive-224 with one clip of its five (the crop and the clip are its own)."""
    return dataclasses.replace(
        sampling.get("audio-adaptive-224"), name="audio-adaptive-224-1clip", num_clips=1
    )


@pytest.fixture(scope="module")
def extracted(media, tmp_path_factory):
    """The store, and what went into and came out of the network's ``layer4`` (hooked)."""
    seen: dict[str, list[torch.Tensor]] = {"input": [], "slow": [], "fast": []}
    build = runner._build_model

    def hooked(spec, recipe):
        model = build(spec, recipe)
        net = model.backbone

        def keep(name):
            return lambda module, args, out: seen[name].append(out.detach().float().clone())

        net.register_forward_pre_hook(
            lambda module, args: seen["input"].append(args[0].detach().float().clone())
        )
        net.slow_path.layer4.register_forward_hook(keep("slow"))
        net.fast_path.layer4.register_forward_hook(keep("fast"))
        return model

    out = tmp_path_factory.mktemp("aa224") / "store.zarr"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "_build_model", hooked)
        result = runner.extract(
            _manifest(),
            videos=media / "video",
            out=out,
            recipe=_recipe(),
            modalities=[runner.ModalitySpec("rgb", "slowfast-r50-mmaction-max")],
            workers=0,
            precision="float32",
            progress=False,
        )
    assert result.ok and result.done == 1
    assert [len(v) for v in seen.values()] == [1, 1, 1]  # one forward: the segment's clip
    return open_cache(out), {k: v[0] for k, v in seen.items()}


def test_max_feature_is_the_recognizers_max_pool_of_layer4(extracted) -> None:
    store, seen = extracted
    slow, fast = seen["slow"], seen["fast"]
    assert slow.shape == (1, 2048, 8, 7, 7) and fast.shape == (1, 256, 32, 7, 7)
    # the authors' lines, as they are (train_recognizer.py l. 117-121)
    x_slow = F.adaptive_max_pool3d(slow, (1, 1, 1))
    x_slow = x_slow.flatten(1)
    x_fast = F.adaptive_max_pool3d(fast, (1, 1, 1))
    x_fast = x_fast.flatten(1)
    v_feat = torch.cat((x_slow, x_fast), dim=1)
    # the same: the maximum over T, H, W jointly, per pathway, slow (2048) first
    amax = torch.cat([slow.amax(dim=(2, 3, 4)), fast.amax(dim=(2, 3, 4))], dim=1)
    assert torch.equal(v_feat, amax)
    stored = store.features("rgb")[:]  # (1, 1, 2304) as written
    assert stored.shape == (1, 1, 2304)
    np.testing.assert_array_equal(stored[0], amax.numpy().astype(stored.dtype))
    mean = torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)
    assert not np.allclose(stored[0].astype(np.float32), mean.numpy(), rtol=0.05)
    info = store.modality_info("rgb")
    assert info["backbone"] == "slowfast-r50-mmaction-max"
    assert store.provenance["recipe"]["crop_offset"] == "floor"


def test_224_clip_is_mmaction2_centre_crop_of_the_resized_frame(extracted, media) -> None:
    _, seen = extracted
    recipe = _recipe()
    registered = sampling.get("audio-adaptive-224")
    assert (registered.resize_shorter, registered.crop_size) == (256, 224)
    # The resized frames (avda's decoder: its resizing is not under test), at the clip's frames
    decoder = VideoDecoder(media / "video" / VIDEO, shorter_side=256)
    frames_of = SegmentFrames.from_seconds("bbb", START, STOP, decoder.fps)
    plan = recipe.rgb_plan(frames_of)
    times = plan.times if plan.times is not None else frames_of.time_of(plan.numbers)
    resized = torch.from_numpy(decoder.frames(decoder.indices_at(times.reshape(-1))))
    resized = resized.permute(0, 3, 1, 2)  # (32, 3, H, W) uint8, as torchvision takes it
    height, width = resized.shape[-2:]
    # mmcv.rescale_size for Resize(scale=(-1, 256)): int(w * 256 / 720 + 0.5)
    assert (width, height) == (int(1280 * 256 / 720 + 0.5), 256) == (455, 256)
    # mmaction2's CenterCrop(224): floored margins (115, 16)
    top, left = (height - 224) // 2, (width - 224) // 2
    expected = TF.crop(resized, top, left, 224, 224).float()
    # torchvision's CenterCrop rounds the odd margin up: one column further right here
    assert torch.equal(CenterCrop(224)(resized), TF.crop(resized, top, left + 1, 224, 224))
    # Normalize (to_bgr=False) and FormatShape NCTHW: (1, 3, 32, 224, 224)
    expected = ((expected - MEAN[:, None, None]) / STD[:, None, None]).permute(1, 0, 2, 3)
    got = seen["input"]
    assert got.shape == (1, 3, 32, 224, 224)
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("first", "then", "words"),
    [
        ("slowfast-r50-mmaction", "slowfast-r50-mmaction-max", "average- against max-pooled"),
        ("slowfast-r50-mmaction-max", "slowfast-r50-mmaction", "max- against average-pooled"),
    ],
)
def test_store_of_one_pooling_is_not_resumed_with_the_other(
    media, tmp_path: Path, first: str, then: str, words: str
) -> None:
    options = dict(
        videos=media / "video", out=tmp_path / "s.zarr", recipe="audio-adaptive", progress=False
    )
    runner.extract(
        _manifest(), modalities=[runner.ModalitySpec("rgb", first)], prepare_only=True, **options
    )
    with pytest.raises(CacheError) as error:
        runner.extract(_manifest(), modalities=[runner.ModalitySpec("rgb", then)], **options)
    message = str(error.value)
    assert "\n" not in message
    assert f"backbone: store has {first!r}, this run asks for {then!r} ({words} layer4" in message
    assert "--force" in message
