"""``epochs`` is the length of a head's whole schedule: staged heads scale their stages with it;
a run refused before training does not block the corrected command; tiny label sets."""

from __future__ import annotations

import pytest
from tests.conftest import make_feature_cache

from avda import cli, runs
from avda.errors import ConfigError
from avda.train import heads
from avda.train.loop import train


def test_mm_sada_stage_one_scales_with_epochs():
    config = heads.config_class("mm-sada")
    default = config.from_dict({})
    assert (default.epochs, default.pretrain_epochs, default.lr_steps) == (231, 77, (77,))
    tenth = config.from_dict({"epochs": 23})
    assert (tenth.pretrain_epochs, tenth.lr_steps) == (8, (8,))
    two = config.from_dict({"epochs": 2})
    assert (two.pretrain_epochs, two.lr_steps) == (1, (1,))
    # A preset's schedule is what scales; explicit values are kept.
    d1 = config.from_dict({"preset": "D1", "epochs": 36})
    assert (d1.pretrain_epochs, d1.lr_steps) == (12, (12,))
    explicit = config.from_dict({"epochs": 10, "pretrain_epochs": 4, "lr_steps": [4]})
    assert (explicit.pretrain_epochs, explicit.lr_steps) == (4, (4,))
    # The resolved config round-trips unchanged (a run's config.yaml).
    assert config.from_dict(tenth.to_dict()) == tenth


def test_audio_adaptive_stages_scale_with_epochs():
    config = heads.config_class("audio-adaptive").from_dict({"epochs": 1})
    assert (config.audio_epochs, config.encoder_epochs) == (1, 1)
    half = heads.config_class("audio-adaptive").from_dict({"epochs": 15})
    default = heads.config_class("audio-adaptive").from_dict({})
    assert half.encoder_epochs == round(default.encoder_epochs * 15 / default.epochs)
    assert all(step < 15 for step in half.lr_steps)


def test_lr_steps_of_single_stage_heads_scale():
    config = heads.config_class("source-only")
    base = config.from_dict({"lr_steps": [10, 20], "epochs": 30})
    assert base.lr_steps == (10, 20)  # explicit: kept
    default = config.from_dict({})
    scaled = config.from_dict({"epochs": max(1, default.epochs // 2)})
    assert len(scaled.lr_steps) <= len(default.lr_steps)


def test_mm_sada_with_one_epoch_is_refused_in_one_line(tmp_path, capsys):
    cache = make_feature_cache(tmp_path / "c.zarr", per_class=4).path
    code = cli.main(
        [
            *("train", "--head", "mm-sada", "--cache", str(cache), "--source", "source"),
            *("--target", "target", "-o", str(tmp_path / "run"), "--epochs", "1", "-q"),
        ]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    err = [line for line in lines if not line.startswith(("WARNING ", "INFO "))]  # log lines
    assert code == 1 and len(err) == 1 and "--epochs 2 or more" in err[0]
    warning = next(line for line in lines if "its recipe makes 9009" in line)  # 1 epoch warns
    assert "(1 epoch of " in warning  # counted in English: "1 epoch", "3 optimiser steps"
    # The corrected command is not blocked by the refused run's folder.
    result = train(
        cache=cache,
        head="mm-sada",
        source=["source"],
        target=["target"],
        out=tmp_path / "run",
        overrides={"epochs": 2, "batch_size": 8, "embedding_dim": 16},
        progress=False,
    )
    assert runs.is_complete(result.run)


def test_a_run_that_trained_is_not_replaced_by_another_config(tmp_path):
    cache = make_feature_cache(tmp_path / "c.zarr", per_class=4).path
    out = tmp_path / "run"
    common = {"cache": cache, "head": "source-only", "source": ["source"], "target": ["target"]}
    train(**common, out=out, overrides={"epochs": 1}, progress=False)
    (out / runs.STATUS).unlink()  # as if killed after its first epoch
    with pytest.raises(Exception, match="another configuration"):
        train(**common, out=out, overrides={"epochs": 2}, progress=False)


def test_audio_adaptive_default_absent_classes_adapts_to_few_classes(tmp_path, caplog):
    cache = make_feature_cache(tmp_path / "c.zarr", num_classes=2, per_class=6).path
    overrides = {
        "epochs": 1,
        "audio_epochs": 1,
        "encoder_epochs": 1,
        "cluster_max_k": 3,
        "attention_depth": 1,
        "recognizer_depth": 1,
    }
    common = {"cache": cache, "head": "audio-adaptive", "source": ["source"]}
    train(**common, target=["target"], out=tmp_path / "run", overrides=overrides, progress=False)
    # said once: the check build before the run's (setup.check_head) said it too
    assert caplog.text.count("2 classes, so absent_classes=1") == 1, caplog.text
    with pytest.raises(ConfigError, match="absent_classes=2 must be below"):
        train(
            **common,
            target=["target"],
            out=tmp_path / "run2",
            overrides={**overrides, "absent_classes": 2},
            progress=False,
        )


def test_schedule_in_steps_trains_the_recipes_amount_at_any_size(caplog):
    ta3n = heads.config_class("ta3n").from_dict({})
    assert ta3n.schedule == "steps" and ta3n.recipe_steps() == 30 * 126
    # On EPIC-100's source_train the paper's schedule, unchanged (parity with the authors).
    epic = ta3n.for_data(16115, "ta3n")
    assert (epic.epochs, epic.lr_steps, epic.eval_every) == (30, (9, 19), 1)
    assert epic.schedule == "epochs"
    # On 480 segments: 4 steps per epoch, the same 3780 steps, lr steps and evaluations alike.
    small = ta3n.for_data(480, "ta3n")
    assert small.epochs == 945 and small.epochs * 4 == 3780
    assert small.lr_steps == (284, 598) and small.eval_every == 32
    # The resolved config is literal: resolving it again (a resumed run) changes nothing.
    assert small.for_data(480) == small
    assert heads.config_class("ta3n").from_dict(small.to_dict()) == small
    # MM-SADA keeps its two stages in proportion; presets carry their own reference set.
    mm = heads.config_class("mm-sada").from_dict({}).for_data(480)
    assert (mm.epochs, mm.pretrain_epochs, mm.lr_steps) == (1126, 375, (375,))
    d1 = heads.config_class("mm-sada").from_dict({"preset": "D1"}).for_data(1543)
    assert (d1.epochs, d1.pretrain_epochs) == (360, 120)


def test_explicit_epochs_are_literal_and_short_runs_warn(caplog):
    config = heads.config_class("ta3n").from_dict({"epochs": 30})
    assert config.schedule == "epochs"
    with caplog.at_level("WARNING"):
        assert config.for_data(480, "ta3n") == config
    assert "120 optimiser steps" in caplog.text and "3780" in caplog.text
    stage = heads.config_class("mm-sada").from_dict({"pretrain_epochs": 5})
    assert stage.schedule == "epochs"  # a stage set explicitly: epochs are the user's


def test_a_finished_run_rerun_does_not_warn_again(tmp_path, caplog):
    """The short-schedule warning is said when a run trains, not again for each rerun that
    finds it complete (a notebook cell run twice, a sweep started again)."""
    cache = make_feature_cache(tmp_path / "c.zarr", per_class=4).path
    kwargs = {
        "cache": cache, "head": "source-only", "source": ["source"], "target": ["target"],
        "out": tmp_path / "run", "overrides": {"epochs": 1}, "progress": False,
    }  # fmt: skip
    with caplog.at_level("WARNING"):
        assert not train(**kwargs).skipped
    assert "optimiser step" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert train(**kwargs).skipped
    assert "optimiser step" not in caplog.text and "is complete: skipping" in caplog.text


def test_the_loop_runs_the_scaled_schedule(tmp_path):
    cache = make_feature_cache(tmp_path / "c.zarr", per_class=4).path  # 16 source segments
    result = train(
        cache=cache,
        head="source-only",
        source=["source"],
        target=["target"],
        out=tmp_path / "run",
        overrides={"batch_size": 8, "reference_segments": 80},  # 10 steps/epoch there, 2 here
        progress=False,
    )
    config = runs.read_config(result.run)["head_config"]
    assert config["epochs"] == 150 and config["schedule"] == "epochs"
    lines = (result.run / runs.METRICS).read_text().splitlines()
    assert len(lines) == 150
