"""Named protocols (avda.protocols): what each sets, the evaluation rule every table row follows
(MM-SADA's last 9 checkpoints, baselines included), semi-supervised CharadesEgo with both mAP
conventions, and the example specs of examples/."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avda import protocols, runs, sweep
from avda.errors import CacheError, ConfigError, RunError
from avda.evaluate import aggregate, tables
from avda.scoring.metrics import map_authors, map_present, top1_accuracy
from avda.train import heads as heads_lib
from avda.train.loop import train
from tests.conftest import make_feature_cache

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = {"epochs": 12, "hidden_dim": 16, "embedding_dim": 16}


def small(head: str) -> dict:
    fields = heads_lib.config_class(head).field_names()
    return {k: v for k, v in SMALL.items() if k in fields or k == "epochs"}


# ------------------------------------------------------------------------------ the registry
@pytest.mark.parametrize("name", protocols.names())
def test_every_method_of_every_protocol_resolves_to_a_valid_config(name):
    protocol = protocols.get(name)
    for method in protocol.methods():
        head, values = protocol.resolve(method)
        config = heads_lib.config_class(head).from_dict(values)
        if protocol.evaluation.checkpoints > 1:  # the rule's checkpoints are kept
            assert config.keep_last_predictions >= protocol.evaluation.checkpoints


def test_mmsada_protocol_trains_its_baselines_as_the_paper():
    protocol = protocols.get("mmsada-epic55")
    head, values = protocol.resolve("source-only")
    assert head == "mm-sada"  # MM source-only: MM-SADA's network without its terms
    config = heads_lib.config_class(head).from_dict(values)
    assert (config.adversarial_weight, config.correspondence_weight) == (0.0, 0.0)
    assert config.pretrain_correspondence_weight == 0.0
    for method in ("adabn", "mmd"):
        head, values = protocol.resolve(method)
        config = heads_lib.config_class(head).from_dict(values)
        assert (config.optimizer, config.lr, config.weight_decay) == ("sgd", 0.01, 1e-7)
        assert config.lr_steps == (77,) and config.epochs == 231
        assert (config.training_clips, config.test_clips) == ("random", "mean-scores")
        assert config.keep_last_predictions == 9
    head, values = protocol.resolve("mmd")
    config = heads_lib.config_class(head).from_dict(values)
    assert (config.embedding, config.bandwidth, config.mmd_weight) == ("per-modality", 9.7, 0.2)
    # the user's explicit values win, the protocol's stages scale to the user's length
    head, values = protocol.resolve("adabn", {"epochs": 12, "lr": 0.05})
    config = heads_lib.config_class(head).from_dict(values)
    assert (config.lr, config.epochs, config.lr_steps) == (0.05, 12, (4,))
    assert config.schedule == "epochs"


def test_ta3n_protocol_source_only_is_ta3n_without_target():
    head, values = protocols.get("ta3n-epic100").resolve("source-only")
    config = heads_lib.config_class(head).from_dict(values)
    assert head == "ta3n" and not config.domain_attention and config.beta == (0.0, 0.0, 0.0)
    # the scripts' use_target=none: main.py computes no domain loss (test_heads_ta3n.py)
    for name in ("ta3n-epic100", "ta3n-ucf-hmdb"):
        assert protocols.get(name).resolve("source-only")[1]["use_target"] is False, name
    assert protocols.get("ta3n-ucf-hmdb").resolve("ta3n")[1].get("use_target", True) is True


def _script_target_batch(lists: Path, source: str, target: str) -> int:
    """script_train_val.sh's ``bS_2=$((bS * num_target / num_source))`` (bash integer
    division) with num_source / num_target the line counts of TA3N's training lists."""
    names = {"ucf": "list_ucf101_train_hmdb51-feature.txt",
             "hmdb": "list_hmdb51_train_ucf101-feature.txt"}  # fmt: skip
    count = {d: len((lists / f).read_text().splitlines()) for d, f in names.items()}
    return 128 * count[target] // count[source]


def test_ta3n_ucf_hmdb_is_the_original_script_in_both_directions(shared_data):
    """cmhungsteve/TA3N script_train_val.sh + opts.py + main.py: lr 3e-2 DANN-annealed per
    step, SGD Nesterov, wd 1e-4, clip 20, 30 epochs, batch 128 + the script's target batch,
    dropout 0.5, 5 segments, use_bn none, TransAttn, constant beta (no ramp, no warm-up);
    beta_0 and gamma by direction (U->H 0.75 / 0.003, H->U 1 / 0.3)."""
    lists = shared_data / "annotations" / "ucf_hmdb_lists"
    protocol = protocols.get("ta3n-ucf-hmdb")
    expected = {  # (source, target): beta, gamma
        ("ucf", "hmdb"): ((0.75, 0.75, 0.5), 0.003),
        ("hmdb", "ucf"): ((1.0, 0.75, 0.5), 0.3),
    }
    for (source, target), (beta, gamma) in expected.items():
        head, values = protocol.resolve("ta3n", None, [source], [target])
        config = heads_lib.config_class(head).from_dict(values)
        assert head == "ta3n" and config.use_bn == "none" and config.domain_attention
        assert (config.optimizer, config.lr, config.momentum, config.nesterov) == (
            "sgd", 3e-2, 0.9, True)  # fmt: skip
        assert (config.lr_schedule, config.weight_decay, config.grad_clip) == (
            "dann-ta3n", 1e-4, 20.0)  # fmt: skip
        assert (config.epochs, config.schedule, config.num_segments) == (30, "epochs", 5)
        assert (config.frame_dropout, config.video_dropout, config.shared_dim) == (0.5, 0.5, 512)
        assert config.beta == beta and config.attentive_entropy_weight == gamma
        assert not config.beta_warmup and config.ramped_beta == ()
        assert config.batch_size == 128
        assert config.target_batch_size == _script_target_batch(lists, source, target)
        _, baseline = protocol.resolve("source-only", None, [source], [target])
        off = heads_lib.config_class(head).from_dict(baseline)
        assert off.beta == (0.0, 0.0, 0.0) and not off.domain_attention
        assert off.attentive_entropy_weight == 0.0 and off.lr_schedule == "dann-ta3n"
        assert off.target_batch_size == config.target_batch_size
        _, dann = protocol.resolve("dann-temrelation", None, [source], [target])
        dann = heads_lib.config_class(head).from_dict(dann)
        assert not dann.domain_attention and dann.attentive_entropy_weight == 0.0
        assert dann.beta == beta and dann.target_batch_size == config.target_batch_size
        assert dann.frame_aggregation == "trn-m"
        _, pooling = protocol.resolve("dann-tempooling", None, [source], [target])
        pooling = heads_lib.config_class(head).from_dict(pooling)
        assert pooling == dataclasses.replace(dann, frame_aggregation="avgpool")
    assert _script_target_batch(lists, "ucf", "hmdb") == 74  # the script's echo: (128, 74)
    # another pair (or none given: --show-config): the script's defaults, U->H
    assert protocol.resolve("ta3n")[1]["beta"] == (0.75, 0.75, 0.5)
    assert protocol.resolve("ta3n", None, ["ucf"], ["olympic"])[1]["target_batch_size"] == 74


def test_ta3n_ucf_hmdb_runs_take_their_directions_values(tmp_path):
    """A run's setting picks the protocol's values: hmdb -> ucf plans H->U's beta, gamma and
    target batch; an explicit --set still wins; fewer than the 30 epochs its table picks the
    best of are refused before training."""
    from avda.train import setup as setup_lib

    cache = make_feature_cache(tmp_path / "c.zarr", domains=("hmdb", "ucf"), per_class=6).path
    planned = {}
    for name, (source, target), extra in (
        ("hu", ("hmdb", "ucf"), {}),
        ("uh", ("ucf", "hmdb"), {}),
        ("set", ("hmdb", "ucf"), {"attentive_entropy_weight": 0.01}),
    ):
        planned[name] = setup_lib.plan(cache=cache, head="ta3n", source=[source],
                                       target=[target], overrides=extra,
                                       protocol="ta3n-ucf-hmdb").config  # fmt: skip
    hu, uh, explicit = planned["hu"], planned["uh"], planned["set"]
    assert (hu.beta, hu.attentive_entropy_weight, hu.target_batch_size) == (
        (1.0, 0.75, 0.5), 0.3, 219)  # fmt: skip
    assert (uh.beta, uh.attentive_entropy_weight, uh.target_batch_size) == (
        (0.75, 0.75, 0.5), 0.003, 74)  # fmt: skip
    assert explicit.attentive_entropy_weight == 0.01 and explicit.beta == (1.0, 0.75, 0.5)
    assert hu.keep_last_predictions == 30 and hu.epochs == 30
    with pytest.raises(ConfigError, match="scores the best of the last 30 checkpoints"):
        setup_lib.plan(cache=cache, head="ta3n", source=["hmdb"], target=["ucf"],
                       overrides={"epochs": 5}, protocol="ta3n-ucf-hmdb")  # fmt: skip
    # the method asked for is named (it said 'this ta3n run' to --head source-only)
    with pytest.raises(ConfigError, match=r"but this source-only \(head ta3n\) run evaluates 5"):
        setup_lib.plan(cache=cache, head="source-only", source=["hmdb"], target=["ucf"],
                       overrides={"epochs": 5}, protocol="ta3n-ucf-hmdb")  # fmt: skip


def test_ta3n_ucf_hmdb_table_reports_the_best_epoch_as_the_authors(tmp_path):
    """main.py evaluates the target val list every epoch and keeps model_best: the table's
    cell is the best of the run's 30 per-epoch target top-1 (not their mean, not the last),
    recorded in config.yaml with the direction's values."""
    cache = make_feature_cache(
        tmp_path / "c.zarr", domains=("hmdb", "ucf"), per_class=6, shift=1.5
    ).path
    small_net = {"shared_dim": 8, "relation_dim": 8, "batch_size": 8, "target_batch_size": 8}
    run = tmp_path / "ta3n"
    train(cache=cache, head="ta3n", source=["hmdb"], target=["ucf"], seed=0, out=run,
          overrides=small_net, progress=False, protocol="ta3n-ucf-hmdb")  # fmt: skip
    recorded = runs.read_config(run)["head_config"]
    assert recorded["beta"] == [1.0, 0.75, 0.5] and recorded["attentive_entropy_weight"] == 0.3
    per_epoch = []
    for epoch in sorted((run / "epochs").iterdir()):
        predictions = runs.read_predictions(epoch, "target_test")
        per_epoch.append(
            top1_accuracy(predictions["scores"]["verb"], predictions["labels"]["verb"])
        )
    # on this cache (seed 0) the best epoch is neither the last nor the mean
    assert len(per_epoch) == 30 and max(per_epoch) > max(per_epoch[-1], np.mean(per_epoch))
    table = aggregate.aggregate([run], layout="settings")
    assert table.title.startswith(
        "protocol ta3n-ucf-hmdb (top1 of the checkpoint with the best top1 of the last 30, "
        "chosen on the scored set)"
    )
    assert table.cell("ta3n", "hmdb→ucf")[0] == pytest.approx(100 * max(per_epoch))


def test_per_setting_values_name_the_protocols_settings_and_methods():
    base = protocols.get("ta3n-ucf-hmdb")
    for per_setting, message in (
        ({"ucf-olympic": {"ta3n": {}}}, "per_setting names 'ucf-olympic', not one of its"),
        ({"hmdb-ucf": {"tan": {}}}, r"names methods \['tan'\] it does not have"),
    ):
        bad = dataclasses.replace(base, name="probe", per_setting=per_setting)
        with pytest.raises(ConfigError, match=message):
            protocols.register(bad)
    assert "probe" not in protocols.PROTOCOLS


def test_setting_of_ignores_the_order_of_domains_and_refuses_an_unknown_setting():
    """A multi-source setting is the same whatever order --source lists its domains in; on the
    benchmark's domains, a pair that is none of the settings of a protocol with per-setting
    values is refused (its defaults are its first setting's values), while off the benchmark
    and without a setting (--show-config) the recipe applies."""
    probe = dataclasses.replace(
        protocols.get("rna-dg"),
        name="probe",
        per_setting={"D2,D3-D1": {"rna": {"rna_weight": 0.5}}},
    )
    assert probe.setting_of(["D3", "D2"], ["D1"]) == "D2,D3-D1"
    assert probe.resolve("rna", None, ["D3", "D2"], ["D1"])[1]["rna_weight"] == 0.5
    assert probe.resolve("rna", None, ["D2", "D3"], ["D1"])[1]["rna_weight"] == 0.5
    default = probe.resolve("rna")[1].get("rna_weight")
    assert probe.resolve("rna", None, ["D1", "D3"], ["D2"])[1].get("rna_weight") == default
    assert probe.setting_of(["D2"], ["D1"]) == "D2-D1"  # a member of epic55-mmsada
    with pytest.raises(
        ConfigError,
        match=r"^protocol probe sets values by setting \(D2,D3-D1\) and D1 -> D2,D3 is none of "
        r"its settings \(D1-D2, .*\), so its defaults would be wrong for it; give the "
        r"--source/--target of one of them, or train without --protocol$",
    ):
        probe.resolve("rna", None, ["D1"], ["D2", "D3"])
    assert probe.setting_of(["P01"], ["P02"]) is None  # another dataset: the recipe only
    assert probe.setting_of(None, None) is None
    ucf_hmdb = protocols.get("ta3n-ucf-hmdb")
    assert ucf_hmdb.setting_of(["ucf"], ["hmdb"]) == "ucf-hmdb"
    assert ucf_hmdb.setting_of(["ucf"], ["olympic"]) is None  # documented: U->H recipe
    protocols.register(dataclasses.replace(probe, name="probe-registered"))  # a group member
    protocols.PROTOCOLS.pop("probe-registered")


def test_show_config_of_a_protocol_shows_the_directions_values(capsys):
    from avda import cli

    base = ["train", "--protocol", "ta3n-ucf-hmdb", "--head", "ta3n", "--show-config"]
    assert cli.main([*base, "--source", "hmdb", "--target", "ucf"]) == 0
    out = capsys.readouterr().out
    assert "attentive_entropy_weight: 0.3 " in out and "target_batch_size: 219 " in out
    assert cli.main(base) == 0  # no setting given: the script's defaults (U->H)
    assert "attentive_entropy_weight: 0.003 " in capsys.readouterr().out


def test_protocol_errors_are_one_line_and_name_the_fix():
    with pytest.raises(ConfigError, match="unknown protocol 'mmsada'.*mmsada-epic55"):
        protocols.get("mmsada")
    with pytest.raises(ConfigError, match="method of protocol ta3n-epic100.*unified protocol"):
        protocols.get("ta3n-epic100").resolve("cia")
    with pytest.raises(ConfigError, match="keep_last_predictions=2 keeps fewer"):
        protocols.get("unified").resolve("dann", {"keep_last_predictions": 2})


# ------------------------------------------------------------------------------ MM-SADA: last 9
@pytest.fixture(scope="module")
def mmsada_runs(tmp_path_factory) -> list[Path]:
    """Every row of MM-SADA's Table 1 trained under its protocol (12 short epochs)."""
    folder = tmp_path_factory.mktemp("mmsada")
    cache = folder / "c.zarr"
    make_feature_cache(cache, shift=2.5, per_class=8, num_classes=4, K=3)
    trained = []
    for method in ("source-only", "adabn", "mmd", "mm-sada"):
        head = protocols.get("mmsada-epic55").head_for(method)
        train(
            cache=cache,
            head=method,
            source=["source"],
            target=["target"],
            out=folder / method,
            overrides=small(head),
            progress=False,
            protocol="mmsada-epic55",
        )
        trained.append(folder / method)
    return trained


def checkpoint_top1(run: Path) -> list[float]:
    folder = run / "epochs"
    values = []
    for epoch in sorted(p.name for p in folder.iterdir())[-9:]:
        predictions = runs.read_predictions(folder / epoch, "target_test")
        values.append(top1_accuracy(predictions["scores"]["verb"], predictions["labels"]["verb"]))
    return values


def test_mmsada_table_averages_the_last_9_checkpoints_of_every_row(mmsada_runs):
    for run in mmsada_runs:  # every row, baselines included, kept its 9 checkpoints
        config = runs.read_config(run)
        assert config["protocol"] == "mmsada-epic55"
        assert len(list((run / "epochs").iterdir())) == 9
    table = aggregate.aggregate(mmsada_runs, layout="settings")
    assert table.methods == ["source-only", "adabn", "mmd", "mm-sada"]
    assert table.title.startswith(
        "protocol mmsada-epic55 (top1 of each of the last 9 checkpoints, averaged"
    )
    for run, method in zip(mmsada_runs, table.methods, strict=True):
        expected = 100 * np.mean(checkpoint_top1(run))
        assert table.cell(method, "source→target")[0] == pytest.approx(expected)
    text = tables.render_aggregate(table)
    assert "protocol mmsada-epic55" in text


def test_a_wrong_checkpoint_moves_every_row_by_a_ninth(mmsada_runs, tmp_path):
    """The rule reads each checkpoint: make the earliest of the 9 wrong everywhere."""
    import shutil

    copies = []
    for run in mmsada_runs:
        copy = tmp_path / run.name
        shutil.copytree(run, copy)
        copies.append(copy)
    before = aggregate.aggregate(copies, layout="settings")
    for copy in copies:
        first = sorted((copy / "epochs").iterdir())[-9]
        predictions = runs.read_predictions(first, "target_test")
        right = top1_accuracy(predictions["scores"]["verb"], predictions["labels"]["verb"])
        width = predictions["scores"]["verb"].shape[1]
        wrong = np.roll(np.eye(width)[predictions["labels"]["verb"]], 1, axis=1)  # never right
        runs.write_predictions(
            first, "target_test", predictions["uids"], predictions["labels"], {"verb": wrong}
        )
        after = aggregate.aggregate(copies, layout="settings")
        method = runs.read_config(copy)["protocol_role"]
        drop = before.cell(method, "source→target")[0] - after.cell(method, "source→target")[0]
        assert drop == pytest.approx(100 * right / 9)
    # the final predictions alone would not have moved
    final = runs.read_predictions(copies[0], "target_test")
    # 4 classes: the protocol's EPIC-55 count (8 verbs) sizes runs on its domains (D1-D3)
    # only, and this cache's domains are source/target
    assert final["scores"]["verb"].shape == (len(final["uids"]), 4)


def test_runs_of_another_protocol_are_left_out_with_a_note(mmsada_runs, tmp_path):
    other = tmp_path / "unified-source-only"
    config = runs.read_config(mmsada_runs[0])
    train(
        cache=config["cache"],
        head="source-only",
        source=["source"],
        target=["target"],
        out=other,
        overrides={"epochs": 9, "hidden_dim": 16},
        progress=False,
        protocol="unified",
    )
    table = aggregate.aggregate([*mmsada_runs, other], layout="settings")
    assert table.protocol == "mmsada-epic55" and len(table.methods) == 4
    assert any("protocol unified" in note for note in table.notes)
    assert "Left out: 1 run(s) trained under protocol unified" in tables.render_aggregate(table)
    only = aggregate.aggregate([*mmsada_runs, other], layout="settings", protocol="unified")
    assert only.methods == ["source-only"] and only.protocol == "unified"
    with pytest.raises(RunError, match="no run was trained under protocol ta3n-epic100"):
        aggregate.aggregate(mmsada_runs, layout="settings", protocol="ta3n-epic100")
    per_run = tables.results_table([*mmsada_runs, other])
    assert per_run["protocol"].tolist() == ["mmsada-epic55"] * 4 + ["unified"]


def test_a_run_without_its_checkpoints_is_refused(mmsada_runs, tmp_path):
    import shutil

    copy = tmp_path / "adabn"
    shutil.copytree(mmsada_runs[1], copy)
    shutil.rmtree(sorted((copy / "epochs").iterdir())[0])
    with pytest.raises(RunError, match="8 checkpoint.*averages the last 9"):
        aggregate.aggregate([copy], layout="settings")


# ------------------------------------------------------------------------------ CharadesEgo
def charades_cache(path: Path, *, seed: int = 0, classes: int = 6) -> Path:
    """Multi-label third -> first person: the source's labels say nothing (shuffled), the
    target's do; class ``classes - 1`` never occurs in the target test set."""
    from avda import cache as cache_lib
    from avda.cache import Status

    rng = np.random.default_rng(seed)
    rows, present = [], []
    for domain, split, count in (
        ("third", "train", 60),
        ("first", "train", 60),
        ("first", "test", 40),
    ):
        for i in range(count):
            top = classes - 1 if (domain, split) == ("first", "test") else classes
            labels = sorted(rng.choice(top, size=2, replace=False).tolist())
            present.append(labels)
            written = labels
            if domain == "third":  # no information: another segment's labels
                written = sorted(rng.choice(classes, size=2, replace=False).tolist())
            rows.append(
                {
                    "uid": f"{domain}-{split}-{i}",
                    "video_id": f"v{i}",
                    "domain": domain,
                    "split": split,
                    "start_sec": 0.0,
                    "stop_sec": 1.0,
                    "labels": ";".join(map(str, written)),
                }
            )
    store = cache_lib.create(
        path, pd.DataFrame(rows), manifest_sha256="0" * 64, recipe={"name": "synthetic"}
    )
    centres = rng.normal(0, 1, (classes, 16)) * 3
    x = np.stack([centres[p].sum(0) for p in present])[:, None, :]
    x = x + rng.normal(0, 1, (len(rows), 2, 16))
    store.add_modality(
        "rgb",
        num_clips=2,
        num_features=16,
        info={"backbone": "synthetic", "weights": None, "weights_sha256": None, "input_spec": {}},
    )
    n = len(rows)
    store.write("rgb", np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)
    return path


def test_charadesego_protocol_learns_from_the_labelled_half_and_reports_both_maps(tmp_path):
    cache = charades_cache(tmp_path / "charades.zarr")
    common = {
        "cache": cache,
        "source": ["third"],
        "target": ["first"],
        "progress": False,
        "protocol": "audio-adaptive-charadesego",
    }
    train(head="source-only", out=tmp_path / "semi", overrides={"epochs": 40}, **common)
    train(
        head="source-only",
        out=tmp_path / "unsupervised",
        overrides={"epochs": 40, "labelled_target": 0.0},
        **common,
    )
    assert runs.read_config(tmp_path / "semi")["head_config"]["labelled_target"] == 0.5
    semi = runs.read_predictions(tmp_path / "semi", "target_test")
    unsupervised = runs.read_predictions(tmp_path / "unsupervised", "target_test")
    gain = map_present(semi["scores"]["labels"], semi["labels"]["labels"]) - map_present(
        unsupervised["scores"]["labels"], unsupervised["labels"]["labels"]
    )
    assert gain > 0.2  # the source's labels are noise: only the labelled target teaches

    table = aggregate.aggregate([tmp_path / "semi"], layout="auto")
    assert table.columns == ["third→first mAP-present", "third→first mAP-authors"]
    assert "labels mAP-present, labels mAP-authors (%)" in table.title  # the columns' order
    present = table.cell("source-only", "third→first mAP-present")[0]
    authors = table.cell("source-only", "third→first mAP-authors")[0]
    scores, labels = semi["scores"]["labels"], semi["labels"]["labels"]
    assert present == pytest.approx(100 * map_present(scores, labels))
    assert authors == pytest.approx(100 * map_authors(scores, labels))
    # Charades' 157 classes, though this cache's largest id is 5 (a manifest subset without its
    # class table): the 152 never seen and the one absent from the test set count 0
    assert scores.shape[1] == 157
    assert authors == pytest.approx(present * 5 / 157)


def test_labelled_target_needs_a_labelled_segment(tmp_path):
    from avda.train.setup import labelled_target_rows

    store = make_feature_cache(tmp_path / "c.zarr")
    rows = np.flatnonzero((store.segments["domain"] == "target").to_numpy())
    labelled, unlabelled = labelled_target_rows(store, rows, 0.5)
    assert len(labelled) == len(unlabelled) == len(rows) // 2
    assert not set(labelled) & set(unlabelled)
    again, _ = labelled_target_rows(store, rows, 0.5)  # the same split for every run
    assert again.tolist() == labelled.tolist()
    with pytest.raises(CacheError, match="no labelled target training segment"):
        labelled_target_rows(store, rows, 0.001)


def test_map_conventions_differ_only_by_absent_classes():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.7, 0.6, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])  # class 2: no positive
    assert map_present(scores, targets) == pytest.approx(1.0)
    assert map_authors(scores, targets) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------ examples/
EXAMPLE_SPECS = sorted(EXAMPLES.glob("*.yaml"))


def test_there_is_an_example_for_every_paper_protocol():
    used = {sweep.load_spec(p, open_caches=False).protocol for p in EXAMPLE_SPECS}
    assert set(protocols.names()) <= used


@pytest.mark.parametrize("path", EXAMPLE_SPECS, ids=lambda p: p.name)
def test_every_example_spec_validates_and_its_published_rows_are_its_methods(path):
    spec = sweep.load_spec(path, open_caches=False)
    assert spec.protocol is not None
    labels = {h.label for h in spec.heads}
    for row, cells in (spec.published or {"rows": {}})["rows"].items():
        assert row in labels, f"{path.name}: published row {row!r} is not a head label"
        settings = {s.name for s in spec.settings}
        for key in cells:
            first = str(key).split(" ")[0]
            assert first in settings | {"Mean", "verb", "noun", "action"}, (path.name, key)


def test_unified_demo_example_runs_on_a_local_cluster_and_names_its_protocol(tmp_path):
    """examples/unified-demo.yaml end to end on a demo-like cache (domains source, target)."""
    import yaml

    data = yaml.safe_load((EXAMPLES / "unified-demo.yaml").read_text())
    make_feature_cache(tmp_path / "cache.zarr", shift=1.0, per_class=6)
    data.update(
        cache=str(tmp_path / "cache.zarr"),
        out=str(tmp_path / "runs"),
        heads=[{"name": h, "epochs": 9, "hidden_dim": 16} for h in data["heads"]],
    )
    spec_path = tmp_path / "unified.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    summary = sweep.run_sweep(sweep.load_spec(spec_path), progress=False)
    assert summary.ok, summary.text()
    index = json.loads((tmp_path / "runs" / sweep.INDEX).read_text())
    assert index["protocol"] == "unified"
    text, _ = tables.evaluate_runs([tmp_path / "runs"], layout="auto")
    assert "protocol unified (top1 or mAP of each of the last 9 checkpoints, averaged)" in text
    for method in ("source-only", "dann", "adabn", "mmd"):
        assert f"| {method} |" in text


# ------------------------------------------------------------------------------ the CLI
def test_cli_train_protocol_show_config_retrain_and_errors(capsys, tmp_path):
    from avda import cli

    def run(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run(
        "train", "--protocol", "mmsada-epic55", "--head", "source-only", "--show-config"
    )
    assert code == 0 and "head: mm-sada" in out and "adversarial_weight: 0.0" in out
    code, out, _ = run("train", "--protocol", "mmsada-epic55", "--head", "adabn", "--show-config")
    assert "training_clips: random" in out and "keep_last_predictions: 9" in out

    code, _, err = run("train", "--protocol", "mmsada", "--head", "adabn", "--show-config")
    assert code == 1 and "unknown protocol 'mmsada'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("train", "--protocol", "ta3n-epic100", "--head", "cia", "--show-config")
    assert code == 1 and "method of protocol ta3n-epic100" in err

    cache = make_feature_cache(tmp_path / "c.zarr").path
    common = ["--cache", cache, "--source", "source", "--target", "target"]
    code, out, err = run(
        "train", "--protocol", "unified", "--head", "source-only", *common,
        "--set", "epochs=9", "--set", "hidden_dim=8", "-o", tmp_path / "run", "-q",
    )  # fmt: skip
    assert code == 0, err
    config = runs.read_config(tmp_path / "run")
    assert (config["protocol"], config["protocol_role"]) == ("unified", "source-only")
    # a protocol run is trained again from its own config.yaml, under the same protocol
    code, out, err = run(
        "train", "--config", tmp_path / "run" / "config.yaml", "-o", tmp_path / "again", "-q"
    )
    assert code == 0, err
    assert runs.read_config(tmp_path / "again") == config

    code, out, _ = run("evaluate", tmp_path / "run", "--layout", "auto")
    assert code == 0 and "protocol unified" in out
    # Too short for the protocol's table (it averages the last 9 checkpoints): refused before
    # training, not a finished run that no table can score.
    code, _, err = run(
        "train", "--protocol", "unified", "--head", "source-only", *common,
        "--epochs", "5", "-o", tmp_path / "short", "-q",
    )  # fmt: skip
    assert code == 1 and "scores the mean of the last 9 checkpoints" in err, err
    assert "evaluates 5 time(s) (5 epochs, eval_every 1): train at least 9 epochs" in err
    # the protocol may come from a --config file, where --protocol cannot be dropped
    assert "(no --protocol, and no protocol: line in a --config file)" in err
    assert not (tmp_path / "short" / runs.STATUS).exists()
    # A run of another version trained too short (here: its kept checkpoints removed) is
    # refused by the table naming why, not told to set what it set.
    import shutil

    shutil.copytree(tmp_path / "run", tmp_path / "cut")
    for folder in sorted((tmp_path / "cut" / "epochs").iterdir())[:5]:
        shutil.rmtree(folder)
    code, _, err = run("evaluate", tmp_path / "cut", "--layout", "auto")
    assert code == 1 and "predictions of 4 checkpoint(s)" in err
    assert "the others are not in its folder" in err and "at least 9 evaluations" in err
    code, out, err = run("evaluate", tmp_path / "run", "--layout", "auto", "--protocol", "rna-dg")
    assert code == 1 and "no run was trained under protocol rna-dg" in err


def test_cli_sweep_check_validates_without_caches(capsys, tmp_path):
    from avda import cli

    code = cli.main(["sweep", str(EXAMPLES / "mmsada-epic55.yaml"), "--check"])
    out, _ = capsys.readouterr()
    assert code == 0 and "valid; 1 cache(s) x 4 head(s) x 6 setting(s) x 3 seed(s) = 72" in out
    assert "  settings: D1->D2, D1->D3, D2->D1, D2->D3, D3->D1, D3->D2\n" in out  # as specs write
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "cache: nowhere.zarr\nprotocol: ta3n-epic100\nheads: [cia]\n"
        "published: {source: T1, rows: {cia: {epic100-uda: 140}}}\n"
    )
    code = cli.main(["sweep", str(bad), "--check"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "heads[0]: unknown method of protocol ta3n-epic100 'cia'" in err
    assert "expected a percentage in [0, 100], got 140" in err
    # a cache that exists names its domains: a setting on another is caught by --check too
    make_feature_cache(tmp_path / "c.zarr", per_class=2)
    bad.write_text("cache: c.zarr\nheads: [dann]\nsettings: [source->target, source->D9]\n")
    code = cli.main(["sweep", str(bad), "--check"])
    _, err = capsys.readouterr()
    assert code == 1 and "settings[1]: unknown domain 'D9'; valid: source, target" in err
    # a head that cannot train on the cache (two modalities needed, one cached) is found by
    # setting each run up as avda train would, before any cluster starts; every such run listed
    make_feature_cache(tmp_path / "rgb.zarr", per_class=2, modalities=("rgb",))
    bad.write_text(
        "cache: rgb.zarr\nheads: [dann, mm-sada, {name: mm-sada, label: mm, "
        "adversarial_weight: 0}]\nsettings: [source->target]\nseeds: [0, 1]\n"
    )
    code = cli.main(["sweep", str(bad), "--check"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert out.splitlines()[0].startswith("mm-sada/source-target: mm-sada needs at least two")
    assert out.splitlines()[1].startswith("mm/source-target: mm-sada needs at least two")
    assert "2 run(s) of the spec cannot train, listed above (the first: mm-sada/" in err
    assert "dann/" not in out


def test_a_protocol_off_its_benchmark_says_only_its_recipe_applies(tmp_path, caplog):
    """A semi-supervised protocol on other domains: its labelled_target uses target labels,
    which the run's log says, naming the protocol's benchmark."""
    cache = make_feature_cache(tmp_path / "c.zarr", per_class=6).path
    with caplog.at_level("WARNING"):
        train(cache=cache, head="source-only", source=["source"], target=["target"],
              out=tmp_path / "run", overrides={"epochs": 1, "hidden_dim": 8}, progress=False,
              protocol="audio-adaptive-charadesego")  # fmt: skip
    text = caplog.text
    assert "protocol audio-adaptive-charadesego is a benchmark of domains first, third" in text
    assert "labelled_target=0.5 trains on that share of ['target']'s training labels" in text
    caplog.clear()
    with caplog.at_level("WARNING"):  # on its benchmark's domains: nothing to say
        train(cache=cache, head="source-only", source=["source"], target=["target"],
              out=tmp_path / "ta3n", overrides={"epochs": 1, "tasks": ["verb"]}, progress=False,
              protocol="ta3n-epic100")  # fmt: skip
    assert "is a benchmark of domains" not in caplog.text


def test_unified_on_a_large_set_trains_enough_epochs_for_its_nine_checkpoints(caplog):
    """1,170 steps of 64 on EPIC-100's 16,115 source segments are 5 epochs; the protocol's table
    averages the last 9 checkpoints (one per epoch), so the run trains 9 (not 5, which no
    table could score, nor a refusal of the protocol at that size)."""
    head, values = protocols.get("unified").resolve("dann")
    config = heads_lib.config_class(head).from_dict(values)
    assert config.for_data(16_115, head).epochs == 5
    with caplog.at_level("INFO"):
        raised = config.for_data(16_115, head, min_evaluations=9)
    assert (raised.epochs, raised.eval_every, raised.schedule) == (9, 1, "epochs")
    assert "9 epochs, as its protocol's table averages the last 9 checkpoints" in caplog.text
    # a small set's recipe is more epochs than that already: unchanged
    assert config.for_data(480, head, min_evaluations=9) == config.for_data(480, head)


def test_plan_raises_a_protocols_epochs_for_its_checkpoints(tmp_path):
    """Through plan (what avda train runs): a recipe of fewer epochs than the protocol's table
    averages checkpoints is trained for as many epochs as it needs (here: a reference of 64
    segments, 30 epochs of 1 step, on 8 steps an epoch: 4 epochs -> 9)."""
    from avda.train import setup as setup_lib

    cache = make_feature_cache(tmp_path / "c.zarr", per_class=130).path
    planned = setup_lib.plan(cache=cache, head="dann", source=["source"], target=["target"],
                             overrides={"reference_segments": 64}, protocol="unified")  # fmt: skip
    assert planned.config.epochs == 9 and planned.config.schedule == "epochs"
    plain = setup_lib.plan(cache=cache, head="dann", source=["source"], target=["target"],
                           overrides={"reference_segments": 64})  # fmt: skip
    assert plain.config.epochs < 9


def test_every_benchmark_protocol_knows_its_class_count():
    """A run on a manifest subset without its .build.json (no class table in the cache) gets
    its classifier width from the protocol: cia-ucf-hmdb had none, so a UCF-HMDB subset whose
    largest id is 5 trained 6-way classifiers, not TA3N's 12 classes."""
    from avda.train.setup import _benchmark_classes

    for protocol in protocols.PROTOCOLS.values():
        if protocol.settings:
            assert protocol.classes, protocol.name
    assert _benchmark_classes("cia-ucf-hmdb", ["ucf"], ["hmdb"]) == {"verb": 12}
    assert _benchmark_classes("cia-ucf-hmdb", ["hmdb"], ["ucf"]) == {"verb": 12}


def test_every_step_count_a_protocol_states_is_one_of_its_heads_recipe():
    # the count docs/protocols.md prints: cia-ucf-hmdb said "1,170 steps" (EPIC-55 D2's count)
    # where its heads make 690; whole epochs make MM-SADA's 3,000 + 6,000 steps 9,009 (1 %)
    import re

    for protocol in protocols.PROTOCOLS.values():
        stated = re.match(r"([\d,]+) steps", protocol.schedule or "")
        if not stated or not protocol.heads:
            continue
        steps = int(stated.group(1).replace(",", ""))
        made = set()
        for method in protocol.heads:
            head, values = protocol.resolve(method)
            made.add(heads_lib.config_class(head).from_dict(values).recipe_steps())
        assert any(abs(m - steps) <= 0.01 * steps for m in made), (protocol.name, steps, made)


def test_the_charadesego_protocol_labels_the_authors_half_of_the_real_file(shared_data, tmp_path):
    """``labelled_target_pick="first"`` (the protocol's) labels what the Audio-Adaptive
    authors' ``CharadesEgo/dataloader_encoder.py`` does: the first ``int(n / 2)`` of the
    training videos of a view that have an action, in the file's order, read here from the real
    annotation file with the csv module as their code reads it. (The shared v0 files' training
    list has no first-person video; the rule is the same on the third-person rows.)"""
    import csv

    from avda.cache.store import create
    from avda.data_manifests import build
    from avda.train.setup import labelled_target_rows

    folder = shared_data / "annotations" / "charadesego_v0"
    with open(folder / "CharadesEgo_v0_train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["length"].strip()]  # the manifest's videos
    view = [r["id"] for r in rows if not r["id"].endswith("EGO") and r["actions"].strip()]
    expected = view[: int(len(view) / 2)]
    manifest = build("charades-ego", folder, unit="videos").manifest
    store = create(tmp_path / "c.zarr", manifest, manifest_sha256="0" * 64, recipe={})
    segments = store.segments
    train = np.flatnonzero(
        ((segments["domain"] == "third") & (segments["split"] == "train")).to_numpy(bool)
    )
    assert (segments["labels"].iloc[train] == "").sum() > 0  # videos without an action
    labelled, unlabelled = labelled_target_rows(store, train, 0.5, "first")
    assert segments["video_id"].iloc[labelled].tolist() == expected
    assert sorted([*labelled, *unlabelled]) == train.tolist()  # no-action videos: unlabelled
    random, _ = labelled_target_rows(store, train, 0.5)
    assert set(random) != set(labelled)
    recipe = protocols.get("audio-adaptive-charadesego")
    assert recipe.common["labelled_target_pick"] == "first"
    # the authors' CharadesEgo get_audio_cluster_feature.py: range(1, 20)
    assert recipe.heads["audio-adaptive"].values["cluster_max_k"] == 19
