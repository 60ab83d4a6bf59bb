"""One ExtractOptions object flows from ``avda.extract`` (and the CLI) to the runner."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import avda
from avda.extract import distributed, runner, sampling

MANIFEST = pd.DataFrame(
    {
        "uid": ["a"],
        "video_id": ["v"],
        "domain": ["D1"],
        "split": ["train"],
        "start_sec": [0.0],
        "stop_sec": [1.0],
    }
)


def test_flat_keywords_build_the_options():
    spec = runner.ModalitySpec("rgb", "i3d")
    options = runner.ExtractOptions.of(
        recipe=sampling.get("demo"), modalities=[spec], videos="clips", flow_stride=2,
        batch_size=4,
    )  # fmt: skip
    assert options.inputs == runner.InputPaths(videos=Path("clips"), flow_stride=2)
    assert options.modalities == (spec,) and options.batch_size == 4
    changed = options.replace(frames="jpgs", force=True)
    assert changed.inputs.videos == Path("clips") and changed.inputs.frames == Path("jpgs")
    assert changed.force and not options.force  # frozen: a copy
    with pytest.raises(TypeError, match="unexpected extraction option.*: bach_size"):
        options.replace(bach_size=2)


@pytest.mark.parametrize("scheduler", [None, "local:1"])
def test_the_api_hands_one_options_object_to_the_runner(monkeypatch, tmp_path, scheduler):
    seen = {}
    returned = runner.ExtractResult(tmp_path / "c.zarr", 0, 0, 0, 0.0, pd.DataFrame())

    def capture(manifest, options, **keywords):
        seen["options"], seen["keywords"] = options, keywords
        return returned

    monkeypatch.setattr(runner, "extract", capture)
    monkeypatch.setattr(distributed, "extract_distributed", capture)
    result = avda.extract(
        MANIFEST, tmp_path / "c.zarr", videos=tmp_path, modalities="rgb,audio", batch_size=3,
        workers=0, device="cpu", scheduler=scheduler, progress=False,
    )  # fmt: skip
    assert result is returned
    options = seen["options"]
    assert isinstance(options, runner.ExtractOptions)
    assert [m.modality for m in options.modalities] == ["rgb", "audio"]
    assert options.inputs.videos == tmp_path and options.batch_size == 3
    assert options.workers == 0 and options.device == "cpu" and not options.progress
    assert seen["keywords"]["out"] == tmp_path / "c.zarr"
    assert set(seen["keywords"]) == (
        {"out", "scheduler", "num_shards"} if scheduler else {"out", "shard", "prepare_only"}
    )


def test_names_stand_for_the_recipe_and_the_default_backbones():
    """python_api.md's low-level path, ``ExtractOptions.of(recipe="demo", modalities=["rgb"],
    ...)``, failed on the names ('str' object has no attribute 'modality')."""
    import inspect

    options = runner.ExtractOptions.of(recipe="demo", modalities=["rgb", "audio"], videos="v")
    assert options.recipe == sampling.get("demo")
    assert options.modalities == (
        runner.ModalitySpec("rgb", "i3d"),
        runner.ModalitySpec("audio", "audio_resnet18"),
    )
    assert runner.ExtractOptions.of(recipe="demo", modalities="rgb,flow").modality_names == [
        "rgb",
        "flow",
    ]
    # the defaults are avda.extract's
    defaults = inspect.signature(avda.api.extract).parameters
    assert defaults["backbone"].default == runner.DEFAULT_BACKBONE
    assert defaults["audio_backbone"].default == runner.DEFAULT_AUDIO_BACKBONE
    with pytest.raises(avda.errors.ConfigError, match="unknown sampling recipe 'dmeo'"):
        runner.ExtractOptions.of(recipe="dmeo", modalities=["rgb"])
