"""`avda finetune` on real decoded clips: learns, resumes, and writes weights extract accepts."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from avda.errors import ConfigError, MediaError
from avda.extract import backbones, finetune, sampling
from avda.extract.decode import probe
from avda.extract.inputs import InputPaths

CONFIG = finetune.FinetuneConfig(epochs=2, batch_size=4, workers=0, lr=0.01)


def _run(demo_dataset, out, **kwargs):
    root, manifest = demo_dataset
    options = dict(
        inputs=InputPaths(videos=root),
        backbone="audio_resnet18",
        modality="audio",
        source=["source"],
        recipe=sampling.get("demo"),
        out=out,
        config=CONFIG,
        progress=False,
    )
    options.update(kwargs)
    return finetune.finetune(manifest, **options)


def test_finetune_learns_and_writes_loadable_weights(demo_dataset, tmp_path):
    torch.set_num_threads(1)
    result = _run(demo_dataset, tmp_path / "audio.pt")
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    model = backbones.create("audio_resnet18", modality="audio", weights=tmp_path / "audio.pt")
    initial = backbones.create("audio_resnet18", modality="audio")
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), initial.state_dict().values(), strict=True)
    )
    assert changed
    meta = json.loads((tmp_path / "audio.pt.json").read_text())
    assert meta["num_classes"] == 4 and meta["source"] == ["source"]
    assert (tmp_path / "audio.pt.classifier.pt").exists()
    assert not (tmp_path / "audio.pt.partial.pt").exists()


def _killed_after(epochs: int, monkeypatch, demo_dataset, out, **kwargs) -> None:
    """Run, stopped (KeyboardInterrupt) just after the partial checkpoint of ``epochs``."""
    torch.set_num_threads(1)
    save = finetune._save_partial
    saved = []

    def save_then_die(path, *args):
        save(path, *args)
        saved.append(path)
        if len(saved) == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "_save_partial", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(demo_dataset, out, **kwargs)
    monkeypatch.setattr(finetune, "_save_partial", save)


def test_finetune_resumes_after_a_kill(demo_dataset, tmp_path, monkeypatch):
    _killed_after(1, monkeypatch, demo_dataset, tmp_path / "a.pt")
    assert (tmp_path / "a.pt.partial.pt").exists()
    resumed = _run(demo_dataset, tmp_path / "a.pt")
    full = _run(demo_dataset, tmp_path / "b.pt")
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history == full.history


def test_a_run_killed_while_writing_its_results_finishes_on_the_rerun(
    demo_dataset, tmp_path, monkeypatch
):
    """Killed after writing OUT but before OUT.json (its partial checkpoint still there): the
    rerun finishes it from the partial, not refuses OUT as a checkpoint avda did not write."""
    torch.set_num_threads(1)
    write = finetune.atomic_write_text

    def die_before_the_record(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "atomic_write_text", die_before_the_record)
    with pytest.raises(KeyboardInterrupt):
        _run(demo_dataset, tmp_path / "a.pt")
    monkeypatch.setattr(finetune, "atomic_write_text", write)
    assert (tmp_path / "a.pt").exists() and not (tmp_path / "a.pt.json").exists()
    assert (tmp_path / "a.pt.partial.pt").exists()
    resumed = _run(demo_dataset, tmp_path / "a.pt")
    full = _run(demo_dataset, tmp_path / "b.pt")
    assert resumed.history == full.history
    assert (tmp_path / "a.pt.json").exists() and not (tmp_path / "a.pt.partial.pt").exists()
    for name in ("a.pt", "a.pt.classifier.pt"):
        mine = torch.load(tmp_path / name, weights_only=True)
        other = torch.load(tmp_path / name.replace("a.pt", "b.pt"), weights_only=True)
        assert all(torch.equal(mine[k], other[k]) for k in other)


def test_a_resume_or_rerun_with_other_settings_is_refused_and_a_finished_run_kept(
    demo_dataset, tmp_path, monkeypatch
):
    """A resume with another --lr went on at the old one (the optimiser state brought it back)
    and recorded the new one; a finished run was trained again from scratch."""
    from avda.errors import ConfigError

    _killed_after(1, monkeypatch, demo_dataset, tmp_path / "a.pt")
    other = finetune.FinetuneConfig(epochs=2, batch_size=4, workers=0, lr=0.5)
    with pytest.raises(ConfigError, match=r"a.pt.partial.pt was started with other settings "
                       r"\(lr 0.01 -> 0.5\); rerun with its settings"):  # fmt: skip
        _run(demo_dataset, tmp_path / "a.pt", config=other)
    with pytest.raises(ConfigError, match=r"other settings .*modality 'audio' -> 'rgb'"):
        _run(demo_dataset, tmp_path / "a.pt", backbone="i3d", modality="rgb")
    # Its own settings resume it (more workers change nothing it computes).
    done = _run(demo_dataset, tmp_path / "a.pt", config=CONFIG.replace(workers=1))
    assert [h["epoch"] for h in done.history] == [1, 2]
    weights = (tmp_path / "a.pt").read_bytes()
    # Run again: nothing to do, the weights kept; more epochs or other settings: refused.
    again = _run(demo_dataset, tmp_path / "a.pt")
    assert again.history == done.history and (tmp_path / "a.pt").read_bytes() == weights
    with pytest.raises(ConfigError, match=r"holds weights fine-tuned for 2 epochs, not 3") as e:
        _run(demo_dataset, tmp_path / "a.pt", config=CONFIG.replace(epochs=3))
    files = [tmp_path / f"a.pt{suffix}" for suffix in ("", ".json", ".classifier.pt")]
    assert all(f.is_file() and str(f) in str(e.value) for f in files), str(e.value)
    with pytest.raises(ConfigError, match=r"fine-tuned with other settings \(lr 0.01 -> 0.5\)"):
        _run(demo_dataset, tmp_path / "a.pt", config=other)
    assert (tmp_path / "a.pt").read_bytes() == weights
    # Another class count (a label on a row outside the source) is another classifier.
    root, manifest = demo_dataset
    wider = manifest.copy()
    wider.loc[wider["domain"] != "source", "verb_class"] = 9
    with pytest.raises(ConfigError, match=r"num_classes 4 -> 10"):
        _run((root, wider), tmp_path / "a.pt")
    # OUT without OUT.json (a downloaded checkpoint at that path) is not overwritten.
    (tmp_path / "a.pt.json").unlink()
    with pytest.raises(ConfigError, match=r"a.pt exists without a.pt.json"):
        _run(demo_dataset, tmp_path / "a.pt")
    assert (tmp_path / "a.pt").read_bytes() == weights


def test_a_partial_run_past_the_asked_epochs_or_without_settings_is_refused(
    demo_dataset, tmp_path, monkeypatch
):
    """Killed after epoch 2 of 3, rerun with --epochs 1: it skipped its loop and recorded
    weights of 2 epochs as 1. A partial file of an earlier avda records no settings."""
    from avda.errors import ConfigError

    _killed_after(2, monkeypatch, demo_dataset, tmp_path / "a.pt", config=CONFIG.replace(epochs=3))
    with pytest.raises(ConfigError, match=r"has trained 2 epochs, more than --epochs 1"):
        _run(demo_dataset, tmp_path / "a.pt", config=CONFIG.replace(epochs=1))
    assert not (tmp_path / "a.pt").exists()
    state = torch.load(tmp_path / "a.pt.partial.pt", weights_only=True)
    del state["key"]
    torch.save(state, tmp_path / "a.pt.partial.pt")
    with pytest.raises(ConfigError, match=r"records no settings \(an earlier avda wrote it\)"):
        _run(demo_dataset, tmp_path / "a.pt", config=CONFIG.replace(epochs=3))


def test_unknown_source_domain(demo_dataset, tmp_path):
    from avda.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown source domain 'src'"):
        _run(demo_dataset, tmp_path / "x.pt", source=["src"])


@pytest.mark.slow
def test_finetune_i3d_rgb(demo_dataset, tmp_path):
    result = _run(
        demo_dataset,
        tmp_path / "i3d.pt",
        backbone="i3d",
        modality="rgb",
        config=finetune.FinetuneConfig(epochs=1, batch_size=4, workers=0),
    )
    backbones.create("i3d", modality="rgb", weights=result.weights)


def test_segments_whose_inputs_fail_are_listed_and_none_left_is_an_error(demo_dataset, tmp_path):
    # A fine-tuning whose videos were all missing stored the initial weights as finished
    # (exit 0, "train accuracy 0.0%"); with some missing it said nothing of them.
    root, manifest = demo_dataset
    source = (manifest["domain"] == "source") & (manifest["split"] == "train")
    broken = manifest.copy()
    lost = broken["uid"] == broken.loc[source, "uid"].iloc[0]
    broken.loc[lost, "video_path"] = "nosuch.mp4"
    result = _run((root, broken), tmp_path / "some.pt", config=CONFIG.replace(epochs=1))
    assert result.skipped == int(lost.sum()) > 0
    listed = pd.read_csv(finetune.failures_path(tmp_path / "some.pt"))
    assert sorted(listed["uid"]) == sorted(broken.loc[lost, "uid"])
    assert listed["error"].str.contains("nosuch.mp4").all()
    # the command says so and exits 3; a rerun (nothing to train) says it again
    from typer.testing import CliRunner

    from avda.cli import app

    broken.to_csv(tmp_path / "m.csv", index=False)
    for _ in range(2):
        ran = CliRunner().invoke(app, [
            "finetune", "--backbone", "audio_resnet18", "--modality", "audio", "-m",
            str(tmp_path / "m.csv"), "--videos", str(root), "--source", "source", "-o",
            str(tmp_path / "cli.pt"), "--recipe", "demo", "--epochs", "1", "--batch-size", "4",
            "--workers", "0", "-q"])  # fmt: skip
        assert ran.exit_code == 3, ran.output
        assert f"{int(lost.sum())} source segments were skipped" in ran.output
        assert "listed in " in ran.output
        assert f"{tmp_path / 'cli.pt'}: 1 epoch, last loss" in ran.output  # not "1 epochs"
    # an output of an earlier avda has the count but no list: the message names what exists
    finetune.failures_path(tmp_path / "cli.pt").unlink()
    ran = CliRunner().invoke(app, [
        "finetune", "--backbone", "audio_resnet18", "--modality", "audio", "-m",
        str(tmp_path / "m.csv"), "--videos", str(root), "--source", "source", "-o",
        str(tmp_path / "cli.pt"), "--recipe", "demo", "--epochs", "1", "--batch-size", "4",
        "--workers", "0", "-q"])  # fmt: skip
    assert ran.exit_code == 3 and f"counted in {tmp_path / 'cli.pt'}.json" in ran.output
    # every input failing: an error, and no weights stored
    broken.loc[source, "video_path"] = "nosuch.mp4"
    with pytest.raises(MediaError, match=r"trained on no clip in epoch 1: the inputs of all "):
        _run((root, broken), tmp_path / "none.pt", config=CONFIG.replace(epochs=1))
    assert not (tmp_path / "none.pt").exists() and not (tmp_path / "none.pt.json").exists()


def test_class_ids_are_checked_against_the_class_table_and_sparse_ids_warned_of(
    demo_dataset, tmp_path, monkeypatch, caplog
):
    """A verb_class of 99,999 (the largest id a manifest may hold) sized the classifier to
    100,000 outputs without a word. Outside the manifest's class table (its .build.json) it
    is refused in one line before the model is built; without a table, ids that leave most
    outputs without a class are warned of."""
    from typer.testing import CliRunner

    from avda.cli import app
    from avda.errors import ManifestError

    class Built(Exception):
        pass

    def build(*args, **kwargs):
        raise Built

    monkeypatch.setattr(backbones, "create", build)
    root, manifest = demo_dataset
    far = manifest.copy()
    far.loc[far.index[-1], "verb_class"] = 99_999
    uid = far["uid"].iloc[-1]
    with caplog.at_level("WARNING", logger="avda.extract.finetune"), pytest.raises(Built):
        _run((root, far), tmp_path / "a.pt")
    assert "the classifier gets 100000 outputs (the largest verb_class + 1) for the 5 " in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="avda.extract.finetune"), pytest.raises(Built):
        _run(demo_dataset, tmp_path / "a.pt")  # ids 0-3: no word
    assert "outputs" not in caplog.text
    refused = (
        f"verb_class 99999 of segment {uid} is outside the manifest's class table of 4 verb "
        "classes (its .build.json): fix the id, or rebuild the manifest"
    )
    names = ["take", "put", "open", "close"]
    with pytest.raises(ManifestError, match=refused.replace("(", r"\(").replace(")", r"\)")):
        _run((root, far), tmp_path / "a.pt", class_names=names)
    far.to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "m.csv.build.json").write_text(json.dumps({"classes": {"verb_class": names}}))
    ran = CliRunner().invoke(app, [
        "finetune", "--backbone", "audio_resnet18", "--modality", "audio", "-m",
        str(tmp_path / "m.csv"), "--videos", str(root), "--source", "source", "-o",
        str(tmp_path / "cli.pt"), "--recipe", "demo", "-q"])  # fmt: skip
    # (an AvdaError: `avda` prints it as its one error line, tests/test_cli_errors.py)
    assert isinstance(ran.exception, ManifestError) and refused in str(ran.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.csv.build.json"]


def test_a_recipe_the_backbone_cannot_take_is_refused_before_decoding(
    demo_dataset, tmp_path, monkeypatch
):
    # tbn with the default mmsada-train recipe decoded every clip, then stopped with "tbn rgb
    # expects a (B, 3, H, W) snippet, got shape [4, 48, 224, 224]"; extract refuses it first
    from avda.extract import inputs

    monkeypatch.setattr(
        inputs.SegmentDataset, "__getitem__", lambda *a: pytest.fail("decoded first")
    )
    # TBN with finetune's default recipe was told "use a recipe made for it (e.g. ta3n)" (rgb,
    # flow) or "use ta3n, rna-net or cia" (audio): not the flag, nor all that fit
    for modality, refused in (
        ("rgb", r"samples 16 rgb frame\(s\) per clip, but tbn rgb takes 1 \(a 3-channel stack\)"),
        ("flow", r"samples 16 flow frame\(s\) per clip, but tbn flow takes 5 \(a 10-channel "),
    ):
        with pytest.raises(ConfigError, match=rf"{refused}.*: set --recipe cia or ta3n$"):
            _run(demo_dataset, tmp_path / "t.pt", backbone="tbn", modality=modality,
                 recipe=sampling.get("mmsada-train"))  # fmt: skip
    with pytest.raises(ConfigError, match=(
        r"tbn audio takes 1.279 s windows \(256 x 256 spectrograms\); recipe 'mmsada-train' "
        r"cuts 10.0 s: set --recipe cia, rna-net or ta3n, or another audio backbone "
        r"\(audio_resnet18\)$"
    )):  # fmt: skip
        _run(demo_dataset, tmp_path / "t.pt", backbone="tbn", modality="audio",
             recipe=sampling.get("mmsada-train"))  # fmt: skip
    assert not (tmp_path / "t.pt.partial.pt").exists()
    # a modality the backbone lacks is said first (not "flow features need --flow DIR", then,
    # given --flow, that slowfast takes rgb only)
    with pytest.raises(ConfigError, match=r"slowfast takes only modality 'rgb', got 'flow'"):
        _run(demo_dataset, tmp_path / "s.pt", backbone="slowfast", modality="flow")
    # SlowFast with finetune's default recipe was told "use another recipe", not which one
    fits = r"slowfast needs its own input_spec: set --recipe audio-adaptive or audio-adaptive-224$"
    with pytest.raises(ConfigError, match=fits):
        _run(demo_dataset, tmp_path / "s.pt", backbone="slowfast", modality="rgb",
             recipe=sampling.get("mmsada-train"))  # fmt: skip
    fits = r"slowfast needs a multiple of 4 .*: set --recipe audio-adaptive or audio-adaptive-224$"
    with pytest.raises(ConfigError, match=fits):
        _run(demo_dataset, tmp_path / "s.pt", backbone="slowfast", modality="rgb",
             recipe=sampling.get("ta3n"))  # fmt: skip


def test_tbn_fine_tunes_with_the_recipe_its_refusal_names(demo_dataset, tmp_path):
    """The recipe TBN's refusal names trains it, and extraction loads what it wrote."""
    torch.set_num_threads(1)
    root, manifest = demo_dataset
    source = manifest.index[(manifest["domain"] == "source") & (manifest["split"] == "train")]
    few = manifest.drop(source[2:])  # two source segments: 50 snippets
    result = _run((root, few), tmp_path / "tbn.pt", backbone="tbn", modality="rgb",
                  recipe=sampling.get("ta3n"), config=CONFIG.replace(epochs=1))  # fmt: skip
    assert result.history[0]["failed_segments"] == 0
    assert json.loads((tmp_path / "tbn.pt.json").read_text())["recipe"] == "ta3n"
    backbones.create("tbn", modality="rgb", weights=result.weights)


def test_a_run_recorded_before_a_recipe_field_existed_is_still_its_own(
    demo_dataset, tmp_path, monkeypatch, caplog
):
    """A finished (or partial) run whose key an older avda wrote, without a recipe field added
    since at its default (crop_offset "round"), is the same run: kept, resumed, not refused.
    One from before batches mixed segments is kept or resumed too, with a warning saying so."""
    done = _run(demo_dataset, tmp_path / "a.pt")
    meta_path = tmp_path / "a.pt.json"
    meta = json.loads(meta_path.read_text())
    assert meta["key"]["batches"] == finetune.BATCHES
    del meta["key"]["recipe"]["crop_offset"]  # as written before Recipe.crop_offset
    del meta["key"]["input"]  # and before the input was recorded
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="avda"):
        assert _run(demo_dataset, tmp_path / "a.pt").history == done.history
    assert "held one segment's clips" not in caplog.text  # its batches are recorded
    del meta["key"]["batches"]  # before batches held clips of several segments
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="avda"):
        assert _run(demo_dataset, tmp_path / "a.pt").history == done.history
    assert "a.pt was fine-tuned by an avda whose batches held one segment's clips" in caplog.text
    assert "its weights are kept; remove it to fine-tune again" in caplog.text
    caplog.clear()
    _killed_after(1, monkeypatch, demo_dataset, tmp_path / "b.pt")
    partial = tmp_path / "b.pt.partial.pt"
    state = torch.load(partial, weights_only=False)
    del state["key"]["recipe"]["crop_offset"]
    del state["key"]["input"]
    del state["key"]["batches"]
    torch.save(state, partial)
    with caplog.at_level("WARNING", logger="avda"):
        assert [h["epoch"] for h in _run(demo_dataset, tmp_path / "b.pt").history] == [1, 2]
    assert "b.pt.partial.pt was fine-tuned by an avda" in caplog.text
    assert "its epochs after 1 will not" in caplog.text


def test_a_run_from_another_input_is_another_run(demo_dataset, tmp_path):
    """The key records the input as a store does (videos, frame folders, their JPEG decoding):
    a run fine-tuned from frames decoded one way is not the run asked from another input."""
    done = _run(demo_dataset, tmp_path / "a.pt")
    meta_path = tmp_path / "a.pt.json"
    meta = json.loads(meta_path.read_text())
    assert meta["key"]["input"] == {"source": "video"}
    meta["key"]["input"] = {"source": "audio-files"}  # as if trained from --audio files
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"settings \(input.source 'audio-files' -> 'video'"):
        _run(demo_dataset, tmp_path / "a.pt")
    assert done.history
    fast = InputPaths(frames=tmp_path, jpeg_dct="fast").provenance("rgb")
    assert fast == {"source": "frames", "jpeg_dct": "fast"}


def test_another_jpeg_decoding_is_named_in_the_refusal():
    """A flow run's input differs only in its JPEG decoding: the refusal names that field. It
    printed both inputs cut at 40 characters, `input {'source': 'flow-frames', 'flow_stride':
    -> {'source': 'flow-frames', 'flow_stride':`, the difference cut off on both sides."""
    accurate = InputPaths(flow="flow").provenance("flow")
    fast = InputPaths(flow="flow", jpeg_dct="fast").provenance("flow")
    said = finetune._differences({"input": fast}, {"input": accurate})
    assert said == "input.jpeg_dct 'fast' -> 'accurate'"
    said = finetune._differences({"input": {"source": "video"}}, {"input": fast})
    assert said.startswith("input.source 'video' -> 'flow-frames'; input.flow_stride None -> ")


def test_a_second_finetune_into_the_same_output_is_refused_while_the_first_runs(
    demo_dataset, tmp_path
):
    # Two processes fine-tuning into one -o (a script started twice) both trained and
    # overwrote each other's OUT.partial.pt; the second now stops at once, naming the holder.
    from avda.cache.lock import RunBusyError, output_lock

    out = tmp_path / "busy.pt"
    with output_lock(out, what="avda finetune"):  # locks are per open file: as another process
        with pytest.raises(RunBusyError, match=r"output .*busy\.pt is being written by "):
            _run(demo_dataset, out)
    assert not out.with_name("busy.pt.partial.pt").exists() and not out.exists()


def test_a_batch_holds_clips_of_different_segments(demo_dataset, tmp_path, monkeypatch):
    # Segment after segment, a batch of 8 from mmsada-train's 10 clips per segment was 8
    # windows of one segment (one label, one segment's BatchNorm statistics); the authors'
    # batches are of segments. Clips now interleave across batch_size pending segments.
    items = [(torch.full((3, 1), float(i)), i) for i in range(4)]
    batches = list(finetune._batches(items, 4))
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3]] * 3
    assert all(torch.equal(b[0][:, 0], b[1].float()) for b in batches)  # each clip its label
    three = [b[1].tolist() for b in finetune._batches(items[:3], 2)]
    assert three == [[0, 1], [2, 0], [1, 2], [0, 1], [2]]
    # the training loop hands _batches batch_size segments at a time (the last: the rest)
    seen = []
    batches_of = finetune._batches

    def spy(items, batch_size):
        seen.append(len(items))
        return batches_of(items, batch_size)

    monkeypatch.setattr(finetune, "_batches", spy)
    _run(demo_dataset, tmp_path / "mixed.pt", config=CONFIG.replace(epochs=1, batch_size=2))
    assert seen[:-1] and all(n == 2 for n in seen[:-1]) and seen[-1] <= 2


def test_a_store_records_the_fine_tuning_and_train_warns_of_target_labels(
    demo_dataset, tmp_path, caplog
):
    # A store extracted with fine-tuned weights recorded their path and digest only: not that
    # (nor on which domains' labels) they were fine-tuned, so a run whose target domain was
    # the fine-tuning's source trained on target-label features without a word.
    import avda
    from avda.cache import open_cache

    root, manifest = demo_dataset
    result = _run(demo_dataset, tmp_path / "ft.pt", config=CONFIG.replace(epochs=1))
    meta = json.loads((tmp_path / "ft.pt.json").read_text())
    from avda._io import sha256_file

    assert meta["weights_sha256"] == sha256_file(result.weights)
    store_path = tmp_path / "c.zarr"
    avda.extract(manifest, store_path, videos=root, modalities=["audio"], recipe="demo",
                 audio_weights=result.weights, workers=0, progress=False)  # fmt: skip
    store = open_cache(store_path)
    tuned = store.modality_info("audio")["finetuned"]
    assert tuned["source"] == ["source"] and tuned["epochs"] == 1 and tuned["recipe"] == "demo"
    assert tuned["record"] == str((tmp_path / "ft.pt.json").absolute())
    assert "(fine-tuned on source)" in store.summary()
    from avda.train import setup

    caplog.clear()
    with caplog.at_level("WARNING", logger="avda.train.setup"):
        setup.plan(cache=store_path, head="source-only", source=["source"], target=["target"])
    assert "fine-tuned" not in caplog.text
    with caplog.at_level("WARNING", logger="avda.train.setup"):
        setup.plan(cache=store_path, head="source-only", source=["target"], target=["source"])
    assert "fine-tuned on the labels of target domain(s) source" in caplog.text
    # a record beside other weights (another file's digest) is not taken as theirs
    from avda.cache.store import finetuning_record

    assert finetuning_record(result.weights, "0" * 64) is None
    assert finetuning_record(tmp_path / "nothing.pt", "0" * 64) is None
    assert store.verify().attrs["notes"] == []  # recorded: nothing to note


def _as_before_the_record(store_path) -> None:
    """The store as an avda before 2026-12-07 extracted it: no modality records a fine-tuning."""
    from avda.cache import open_cache

    store = open_cache(store_path, mode="a")
    provenance = store.provenance
    for info in provenance["modalities"].values():
        info.pop("finetuned", None)
    store._set_provenance(provenance)


def test_a_store_extracted_before_the_record_reads_it_beside_its_weights(
    demo_dataset, tmp_path, caplog
):
    """A store extracted before stores recorded fine-tunings named its weights only: `avda
    train` could not know that they were trained on its target domain's labels, and said
    nothing. The record beside the weights, where it is there and is theirs (by digest), tells
    train, `cache info` and `cache verify` (a note, not a problem); elsewhere nothing is said."""
    import avda
    from avda.cache import open_cache
    from avda.train import setup

    root, manifest = demo_dataset
    result = _run(demo_dataset, tmp_path / "ft.pt", config=CONFIG.replace(epochs=1))
    store_path = tmp_path / "c.zarr"
    avda.extract(manifest, store_path, videos=root, modalities=["audio"], recipe="demo",
                 audio_weights=result.weights, workers=0, progress=False)  # fmt: skip
    _as_before_the_record(store_path)
    record = str((tmp_path / "ft.pt.json").absolute())

    def said() -> tuple[str, list[str], str]:
        store = open_cache(store_path)
        caplog.clear()
        with caplog.at_level("WARNING", logger="avda.train.setup"):
            setup.plan(cache=store_path, head="source-only", source=["target"], target=["source"])
        found = store.verify()
        assert found.empty
        return store.summary(), found.attrs["notes"], caplog.text

    summary, notes, logged = said()
    assert f"(fine-tuned on source; not recorded here: from {record})" in summary
    note = (
        f"the audio weights were fine-tuned by `avda finetune` on the labels of source "
        f"({record}), which the store, extracted before stores recorded fine-tunings "
        "(2026-12-07), does not record"
    )
    assert len(notes) == 1 and note in notes[0], notes
    assert "fine-tuned on the labels of target domain(s) source" in logged
    # a record from before records held the weights' digest: theirs while the file is
    meta = json.loads((tmp_path / "ft.pt.json").read_text())
    del meta["weights_sha256"]
    (tmp_path / "ft.pt.json").write_text(json.dumps(meta))
    assert "fine-tuned on the labels" in said()[2]
    # other weights at that path now (fine-tuned again): their record is not the store's
    weights = torch.load(result.weights, weights_only=True)
    first = next(iter(weights))
    weights[first] = weights[first] + 1
    torch.save(weights, result.weights)
    summary, notes, logged = said()
    assert "fine-tuned" not in summary and notes == [] and "fine-tuned" not in logged


def test_fine_tuning_without_weights_is_said_to_be_from_scratch(caplog):
    # It said "features are meaningless beyond the architecture; give a published checkpoint
    # (avda extract/demo: --weights ...)": wrong for a training, and another command's options.
    from avda.extract import backbones as backbones_lib
    from avda.extract.backbones.weights import advising

    with caplog.at_level("WARNING", logger="avda.extract.backbones"):
        with advising("finetune"):
            backbones_lib.create("audio_resnet18", modality="audio")
    assert "fine-tuning from random initialisation (from scratch); give --weights" in caplog.text
    assert "meaningless" not in caplog.text and "extract/demo" not in caplog.text


def test_a_stopped_finetune_deletes_its_lock_file_while_it_still_holds_it(
    demo_dataset, tmp_path, monkeypatch
):
    # A run stopped before it made a file deleted the OUT.lock it created after letting go
    # of its flock: a process waiting for it (AVDA_LOCK_WAIT) could lock the file meanwhile,
    # and, the file deleted, a third lock a new one: two trainers. It deletes it still held.
    from tests.adversarial._helpers import probe_held_when_deleted

    from avda.cache.lock import lock_path

    out = tmp_path / "stopped.pt"
    lock = lock_path(out)
    held_then = probe_held_when_deleted(monkeypatch, lock)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "_finetune", stop)
    with pytest.raises(KeyboardInterrupt):
        _run(demo_dataset, out)
    monkeypatch.undo()
    assert held_then == [True] and not lock.exists()


def test_a_refused_finetune_never_deletes_the_lock_file_of_the_holder(
    demo_dataset, tmp_path, monkeypatch
):
    # Two avda finetune -o OUT started together both saw no OUT.lock; the one refused took
    # the file as its own and deleted it while the other held its flock on it: a third
    # process then created a new OUT.lock, locked it and trained beside the holder.
    from avda.cache import lock as lock_module
    from avda.cache.lock import RunBusyError, output_lock

    out = tmp_path / "race.pt"
    with output_lock(out, what="avda finetune"):  # the holder, started at the same moment
        real = lock_module.lock_path

        class Unseen(type(real(out))):
            def exists(self, **kwargs):  # as it was when the refused process looked
                return False

        monkeypatch.setattr(lock_module, "lock_path", lambda path, **kw: Unseen(real(path, **kw)))
        with pytest.raises(RunBusyError):
            _run(demo_dataset, out)
        monkeypatch.undo()
        assert real(out).exists()  # the holder's lock file is still there


@pytest.mark.parametrize("case", ["whole", "a-segment-fails", "short-segments"])
def test_the_bar_counts_clips_as_they_train(demo_dataset, tmp_path, monkeypatch, case):
    # The bar counted segments as decoded: with fewer segments than --batch-size every step
    # came after it read 100% (minutes of silence on a CPU). It now moves with each step and
    # ends at the clips trained, its total less a failed segment's clips. A segment shorter
    # than a clip (1 ms; 2 ms at its video's end) still gives every clip of the recipe (its
    # windows reach past it), so the total set at the start holds: K clips per segment.
    torch.set_num_threads(1)
    events: list = []
    bars: list = []
    make_bar = finetune.progress_bar

    def recording_bar(*args, **kwargs):
        bar = make_bar(*args, **kwargs)
        update = bar.update

        def recorded(n=1):
            events.append(("bar", n))
            return update(n)

        bar.update = recorded
        bars.append((bar, bar.total))
        return bar

    step = finetune._step

    def recorded_step(model, classifier, optimizer, clips, target, *args):
        events.append(("step", len(target)))
        return step(model, classifier, optimizer, clips, target, *args)

    monkeypatch.setattr(finetune, "progress_bar", recording_bar)
    monkeypatch.setattr(finetune, "_step", recorded_step)
    root, manifest = demo_dataset
    manifest = manifest.copy()
    source = manifest.index[(manifest["domain"] == "source") & (manifest["split"] == "train")]
    recipe = sampling.get("demo")
    if case == "a-segment-fails":  # a source segment whose video is missing: its clips never train
        manifest.loc[source[0], "video_path"] = "nosuch.mp4"
    if case == "short-segments":  # 2 audio windows per segment, of segments shorter than one
        recipe = recipe.replace(audio_windows="clips")
        manifest.loc[source[0], "stop_sec"] = manifest.loc[source[0], "start_sec"] + 0.001
        last = manifest.loc[source[1:], "stop_sec"].idxmax()  # its video's last segment
        end = probe(root / manifest.loc[last, "video_path"]).duration
        manifest.loc[last, ["start_sec", "stop_sec"]] = [end - 0.002, end]
    per_segment = recipe.num_audio_windows
    big = CONFIG.replace(epochs=1, batch_size=len(source) + 5)  # every segment in one batch
    result = _run((root, manifest), tmp_path / "bar.pt", config=big, recipe=recipe, progress=True)
    trained = len(source) - result.skipped
    assert result.skipped == int(case == "a-segment-fails")
    steps = [n for kind, n in events if kind == "step"]
    assert steps and len(bars) == 1
    # each step is followed by the bar's update of its clips, none before the first step
    assert events == [e for n in steps for e in (("step", n), ("bar", n))]
    bar, first_total = bars[0]
    assert bar.n == sum(steps) == bar.total == trained * per_segment
    assert first_total == len(source) * per_segment
