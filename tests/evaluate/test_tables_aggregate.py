"""Paper-style tables over real run directories (trained by ``train()`` on tiny caches)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import make_feature_cache

from avda import protocols, runs
from avda.errors import ConfigError, RunError
from avda.evaluate import aggregate, tables
from avda.scoring.metrics import mean_average_precision
from avda.scoring.protocols import epic100_accuracies
from avda.train.loop import train

FAST = {"epochs": 3, "hidden_dim": 16}


def synthetic_cache(path: Path, *, tasks: tuple[str, ...], per_class: int = 6, seed: int = 0):
    """Domains source/target; labels for ``tasks`` among verb, noun, labels (multi-label)."""
    from avda import cache as cache_lib
    from avda.cache import Status

    rng = np.random.default_rng(seed)
    rows = []
    for domain in ("source", "target"):
        for split in ("train", "test"):
            for c in range(4):
                for i in range(per_class):
                    row = {
                        "uid": f"{domain}-{split}-{c}-{i}",
                        "video_id": f"v{c}",
                        "domain": domain,
                        "split": split,
                        "start_sec": 0.0,
                        "stop_sec": 1.0,
                    }
                    if "verb" in tasks:
                        row["verb_class"] = c
                    if "noun" in tasks:
                        row["noun_class"] = (c + i) % 3
                    if "labels" in tasks:
                        row["labels"] = f"{c};{(c + 1 + i % 2) % 5}"
                    rows.append(row)
    segments = pd.DataFrame(rows)
    store = cache_lib.create(path, segments, manifest_sha256="0" * 64, recipe={"name": "synthetic"})
    centres = rng.normal(0, 3, (4, 8))
    classes = np.array([int(u.split("-")[2]) for u in segments["uid"]])
    x = centres[classes][:, None, :] + rng.normal(0, 1, (len(segments), 2, 8))
    store.add_modality(
        "rgb",
        num_clips=2,
        num_features=8,
        info={"backbone": "synthetic", "weights": None, "weights_sha256": None, "input_spec": {}},
    )
    n = len(segments)
    store.write("rgb", np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)
    return path


@pytest.fixture(scope="module")
def sweep_like(tmp_path_factory) -> Path:
    """2 heads x 2 settings x 2 seeds, laid out and indexed as ``avda sweep`` does."""
    root = tmp_path_factory.mktemp("tables")
    cache = root / "features.zarr"
    make_feature_cache(cache, shift=1.5)
    out = root / "runs"
    entries = []
    for head, label in (("source-only", "Source-only"), ("dann", "DANN_v2")):
        for source, target in (("source", "target"), ("target", "source")):
            for seed in (0, 1):
                name = f"{label}/{source}-{target}/seed{seed}"
                train(
                    cache=cache,
                    head=head,
                    source=[source],
                    target=[target],
                    out=out / name,
                    seed=seed,
                    overrides=FAST,
                    progress=False,
                )
                entries.append({"run": name, "method": label, "seed": seed})
    (out / aggregate.SWEEP_INDEX).write_text(json.dumps({"runs": entries}))
    return out


def target_top1(run: Path) -> float:
    predictions = runs.read_predictions(run, "target_test")
    scores, labels = predictions["scores"]["verb"], predictions["labels"]["verb"]
    return 100.0 * float(np.mean(scores.argmax(1) == labels))


def test_settings_layout_is_mean_std_over_seeds_with_a_mean_column(sweep_like):
    run_dirs = aggregate.find_runs([sweep_like])
    assert len(run_dirs) == 8
    table = aggregate.aggregate(run_dirs)
    assert table.methods == ["Source-only", "DANN_v2"]  # the sweep's order and labels
    assert table.columns == ["source→target", "target→source", aggregate.MEAN]
    assert table.title.startswith("no protocol (each head's defaults; final predictions); ")
    assert "; target_test: verb top1" in table.title
    for method in table.methods:
        per_seed = {}
        for pair, column in (
            ("source-target", "source→target"),
            ("target-source", "target→source"),
        ):
            values = [target_top1(sweep_like / method / pair / f"seed{s}") for s in (0, 1)]
            per_seed[column] = values
            mean, std, count = table.cell(method, column)
            assert count == 2
            assert mean == pytest.approx(np.mean(values))
            assert std == pytest.approx(np.std(values, ddof=1))
        seed_means = np.mean([per_seed["source→target"], per_seed["target→source"]], axis=0)
        mean, std, _ = table.cell(method, aggregate.MEAN)
        assert mean == pytest.approx(seed_means.mean())
        assert std == pytest.approx(np.std(seed_means, ddof=1))


def test_markdown_marks_the_best_and_compare_shows_gains(sweep_like):
    table = aggregate.aggregate(aggregate.find_runs([sweep_like]))
    markdown = tables.aggregate_markdown(table)
    lines = markdown.splitlines()
    assert lines[0] == "| Method | source→target | target→source | Mean |"
    for position, column in enumerate(table.columns):
        best = table.best(column)
        assert best, column
        for method, line in zip(table.methods, lines[2:4], strict=True):
            cell = line.split(" | ")[position + 1].strip(" |")
            assert cell.startswith("**") == (method in best), (column, method, cell)
    compared = tables.aggregate_markdown(table, baseline="Source-only")
    gains = table.gains("Source-only")
    dann_line = next(line for line in compared.splitlines() if line.startswith("| DANN_v2"))
    for column in table.columns:
        assert f"({round(gains[('DANN_v2', column)], 1) + 0.0:+.1f})" in dann_line
    assert "gain over Source-only" in compared
    assert gains[("Source-only", "Mean")] == 0.0
    with pytest.raises(ConfigError, match="'ADDA' is not a method of this table"):
        tables.aggregate_markdown(table, baseline="ADDA")


def test_latex_csv_and_files(sweep_like, tmp_path):
    table = aggregate.aggregate(aggregate.find_runs([sweep_like]))
    latex = tables.aggregate_latex(table, baseline="Source-only")
    assert r"\begin{tabular}{lccc}" in latex and r"\toprule" in latex and r"\bottomrule" in latex
    assert r"source$\rightarrow$target" in latex
    assert r"DANN\_v2 & " in latex  # escaped
    assert r"\textbf{" in latex and r"$\pm$" in latex
    frame = tables.aggregate_frame(table, baseline="Source-only")
    assert frame["method"].tolist() == table.methods
    mean, std, count = table.cell("DANN_v2", "source→target")
    # the setting as specs and run folders spell it; a name the table lacks is an error (it was
    # an empty cell, NaN, which reads like a run that is missing)
    for spelling in ("source->target", "source-target"):
        assert table.cell("DANN_v2", spelling) == (mean, std, count)
    with pytest.raises(
        ConfigError, match=r"'DANN' is not a method of this table; methods: .*DANN_v2"
    ):
        table.cell("DANN", "source→target")
    with pytest.raises(
        ConfigError, match="'D1->D2' is not a column of this table; columns: source→target"
    ):
        table.cell("DANN_v2", "D1->D2")
    row = frame.set_index("method").loc["DANN_v2"]
    assert row["source→target mean"] == pytest.approx(mean)
    assert row["source→target std"] == pytest.approx(std)
    assert row["source→target seeds"] == count
    assert row["Mean gain"] == pytest.approx(table.gains("Source-only")[("DANN_v2", "Mean")])
    written = tables.write_aggregate(table, tmp_path / "epic55")
    assert [p.name for p in written] == ["epic55.md", "epic55.csv", "epic55.tex"]
    assert pd.read_csv(written[1])["method"].tolist() == table.methods
    text, paths = tables.evaluate_runs([sweep_like], layout="auto", fmt="latex")
    assert text == tables.aggregate_latex(table) and paths == []


def test_runs_layout_keeps_the_per_run_table(sweep_like, tmp_path):
    run_dirs = aggregate.find_runs([sweep_like])
    table = tables.results_table(run_dirs)
    assert len(table) == 8 and list(table.columns[:4]) == ["method", "head", "setting", "seed"]
    # each run named by its method, as the paper table names it (they were all "seed0",
    # "seed1", then their paths below the sweep's folder: "seed0" again for one method)
    assert table["method"].tolist() == ["Source-only"] * 4 + ["DANN_v2"] * 4
    assert tables.results_table(run_dirs[:1])["method"].tolist() == ["Source-only"]
    one_method = aggregate.find_runs([sweep_like / "DANN_v2" / "source-target"])
    assert tables.results_table(one_method)["method"].tolist() == ["DANN_v2", "DANN_v2"]
    text, paths = tables.evaluate_runs([sweep_like], layout="runs", out=tmp_path / "t")
    assert text == tables.to_markdown(table)
    assert [p.suffix for p in paths] == [".md", ".csv"]
    # a setting spelled as the paper tables spell it, in each file (it was source->target)
    settings = {"source→target", "target→source"}
    assert set(table["setting"]) == settings and "| source→target |" in text
    assert set(pd.read_csv(paths[1])["setting"]) == settings
    assert "->" not in paths[0].read_text() + paths[1].read_text()
    # OUT's own suffix is replaced only when it is a table's: -o tab.v1 and -o tab.v2 both
    # wrote tab.md and tab.csv, the second over the first
    for out, names in (
        ("tab.v1", ["tab.v1.md", "tab.v1.csv"]),
        ("tab.v2", ["tab.v2.md", "tab.v2.csv"]),
        ("r.md", ["r.md", "r.csv"]),
        ("r.csv", ["r.md", "r.csv"]),
        ("R.MD", ["R.md", "R.csv"]),
    ):
        _, paths = tables.evaluate_runs([sweep_like], layout="runs", out=tmp_path / out)
        assert [p.name for p in paths] == names
    paper = aggregate.aggregate(aggregate.find_runs([sweep_like]))
    written = tables.write_aggregate(paper, tmp_path / "p.2026.12")
    assert [p.name for p in written] == ["p.2026.12.md", "p.2026.12.csv", "p.2026.12.tex"]
    with pytest.raises(ConfigError, match="--compare: only a paper layout compares methods"):
        tables.evaluate_runs([sweep_like], baseline="Source-only")
    # --set / --task / --metric choose its columns (they were ignored: every column printed)
    text, _ = tables.evaluate_runs([sweep_like], layout="runs", eval_set="target_test",
                                   metric="top1", fmt="csv")  # fmt: skip
    header = text.splitlines()[0].split(",")
    scored = [c for c in header if c.count("/") == 2]
    assert scored and all(c.startswith("target_test/") and c.endswith("/top1") for c in scored)
    assert header[:4] == ["method", "head", "setting", "seed"]
    with pytest.raises(ConfigError, match=r"--set foo: the runs' table has no such column "
                       r"\(it has: source_test, target_test\)"):  # fmt: skip
        tables.evaluate_runs([sweep_like], layout="runs", eval_set="foo")


def test_the_runs_layout_names_runs_by_method_and_config_not_by_seed_folder(tmp_path):
    """A run of one method was named "seed0" (its folder); runs are named as the paper table
    names them (head, protocol role or sweep label, and the config fields that differ), and
    two rows that would read the same (a copied run) by their paths too."""
    cache = make_feature_cache(tmp_path / "f.zarr", shift=1.0).path
    so = _train_fast(cache, tmp_path / "so" / "seed0")
    fast = _train_fast(cache, tmp_path / "dann" / "seed0", head="dann", overrides={"lr": 0.01})
    slow = _train_fast(cache, tmp_path / "dann-slow" / "seed0", head="dann", overrides={"lr": 1e-4})
    assert tables.results_table([so])["method"].tolist() == ["source-only"]
    assert tables.results_table([so, fast, slow])["method"].tolist() == [
        "source-only", "dann (lr=0.01)", "dann (lr=0.0001)"
    ]  # fmt: skip
    shutil.copytree(so, tmp_path / "copy" / "seed0")
    assert tables.results_table([so, tmp_path / "copy" / "seed0"])["method"].tolist() == [
        "source-only [so/seed0]", "source-only [copy/seed0]"
    ]  # fmt: skip


def test_find_runs_leaves_incomplete_runs_out(sweep_like, tmp_path, caplog):
    unfinished = tmp_path / "unfinished"
    runs.write_config(unfinished, {"head": "dann"})
    with caplog.at_level(logging.WARNING):
        found = aggregate.find_runs([sweep_like / "DANN_v2", unfinished])
    assert len(found) == 4 and unfinished not in found
    assert "is not complete" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="holds no avda run"):
        aggregate.find_runs([tmp_path / "empty"])


def test_epic100_layout_scores_verb_noun_and_action(tmp_path):
    cache = synthetic_cache(tmp_path / "epic.zarr", tasks=("verb", "noun"))
    run_dirs = []
    for seed in (0, 1):
        run = tmp_path / f"ta3n-like-{seed}"
        train(
            cache=cache,
            head="source-only",
            source=["source"],
            target=["target"],
            out=run,
            seed=seed,
            overrides=FAST,
            progress=False,
        )
        run_dirs.append(run)
    table = aggregate.aggregate(run_dirs)  # auto: verb and noun -> epic100
    assert table.columns == [
        "verb top-1",
        "verb top-5",
        "noun top-1",
        "noun top-5",
        "action top-1",
        "action top-5",
    ]
    expected = []
    for run in run_dirs:
        predictions = runs.read_predictions(run, "target_test")
        expected.append(
            epic100_accuracies(
                predictions["scores"]["verb"],
                predictions["scores"]["noun"],
                predictions["labels"]["verb"],
                predictions["labels"]["noun"],
            )
        )
    for column in table.columns:
        task, k = column.split(" top-")
        values = [100 * e[f"all_{task}_accuracy_at_{k}"] for e in expected]
        assert table.cell("source-only", column)[0] == pytest.approx(np.mean(values))
    assert "EPIC-100" in table.title
    settings = aggregate.aggregate(run_dirs, layout="settings", task="noun", metric="top5")
    assert settings.columns == ["source→target"]
    assert settings.cell("source-only", "source→target")[0] == pytest.approx(
        np.mean([100 * e["all_noun_accuracy_at_5"] for e in expected])
    )
    # a verb-only run beside them (audio-adaptive predicts verbs) refused the whole epic100
    # table; it is left out with a note, and auto's switch to the settings layout says why
    verb_only = tmp_path / "verbs"
    train(cache=cache, head="source-only", source=["source"], target=["target"], out=verb_only,
          overrides={**FAST, "tasks": ["verb"]}, progress=False)  # fmt: skip
    mixed = aggregate.aggregate([*run_dirs, verb_only], layout="epic100")
    assert mixed.columns == table.columns
    (kept,) = mixed.methods  # told apart from the verb-only run by its tasks
    assert mixed.cell(kept, "verb top-1")[0] == table.cell("source-only", "verb top-1")[0]
    assert any("Left out: 1 run(s) without verb and noun tasks" in n for n in mixed.notes)
    auto = aggregate.aggregate([*run_dirs, verb_only])
    assert any("--layout epic100 scores the others'" in n for n in auto.notes)


def test_multi_label_runs_report_map_and_configs_tell_methods_apart(tmp_path):
    cache = synthetic_cache(tmp_path / "charades.zarr", tasks=("labels",))
    run_dirs = []
    for lr in (1e-3, 1e-2):
        run = tmp_path / f"lr{lr}"
        train(
            cache=cache,
            head="source-only",
            source=["source"],
            target=["target"],
            out=run,
            seed=0,
            overrides={**FAST, "lr": lr},
            progress=False,
        )
        run_dirs.append(run)
    table = aggregate.aggregate(run_dirs)
    assert table.methods == ["source-only (lr=0.001)", "source-only (lr=0.01)"]
    assert "labels mAP" in table.title
    predictions = runs.read_predictions(run_dirs[1], "target_test")
    expected = 100 * mean_average_precision(
        predictions["scores"]["labels"], predictions["labels"]["labels"]
    )
    mean, std, count = table.cell("source-only (lr=0.01)", "source→target")
    assert mean == pytest.approx(expected) and count == 1 and np.isnan(std)
    # the people's CSV has each segment's true ids and its five best-scored classes
    csv = pd.read_csv(run_dirs[1] / runs.PREDICTIONS / "target_test.csv", dtype=str)
    scores, truth = predictions["scores"]["labels"], predictions["labels"]["labels"]
    assert list(csv["uid"]) == list(predictions["uids"])
    assert [set(map(int, v.split(";"))) for v in csv["labels_labels"]] == [
        set(np.flatnonzero(row)) for row in truth
    ]
    best = [int(v.split(";")[0]) for v in csv["labels_top5"]]
    width = min(5, scores.shape[1])
    assert best == list(scores.argmax(1))
    assert all(len(v.split(";")) == width for v in csv["labels_top5"])
    assert "| source-only (lr=0.01) | " in tables.aggregate_markdown(table)
    with pytest.raises(ConfigError, match="metric top1 does not apply"):
        aggregate.aggregate(run_dirs, metric="top1")


def test_no_mean_over_settings_scored_by_different_metrics(tmp_path):
    # A CharadesEgo run (mAP) beside a UCF->HMDB run (top-1): their Mean was the average of an
    # mAP and a top-1
    multi = synthetic_cache(tmp_path / "charades.zarr", tasks=("labels",))
    single = synthetic_cache(tmp_path / "ucf.zarr", tasks=("verb",))
    run_dirs = [_train_fast(multi, tmp_path / "ce"), _train_fast(single, tmp_path / "uh")]
    table = aggregate.aggregate(run_dirs)
    assert aggregate.MEAN not in table.columns and len(table.columns) == 2
    assert any("labels mAP, verb top1" in note and "cannot be averaged" in note
               for note in table.notes)  # fmt: skip
    assert "cannot be averaged" in tables.aggregate_markdown(table)
    # the same metric in every column: the Mean is there
    other = synthetic_cache(tmp_path / "hmdb.zarr", tasks=("verb",), seed=1)
    same = aggregate.aggregate([run_dirs[1], _train_fast(other, tmp_path / "uh2")])
    assert same.columns[-1] == aggregate.MEAN


def test_runs_of_one_setting_on_other_caches_are_columns_apart_not_seeds(tmp_path):
    """The same head, setting and seed on two caches (other features, or another dataset):
    averaging them as seeds of one experiment would make one number of two; each cache gets
    its own column, named after it."""
    run_dirs = []
    for name, shift in (("i3d", 0.0), ("tbn", 2.0)):
        cache = tmp_path / name / "features.zarr" if name == "tbn" else tmp_path / f"{name}.zarr"
        make_feature_cache(cache, shift=shift, seed=len(name) + int(shift))
        for seed in (0, 1):
            out = tmp_path / "runs" / f"{name}-{seed}"
            train(cache=cache, head="source-only", source=["source"], target=["target"],
                  out=out, seed=seed, overrides=FAST, progress=False)  # fmt: skip
            run_dirs.append(out)
    table = aggregate.aggregate(run_dirs)
    assert table.columns == ["source→target (i3d)", "source→target (features)", aggregate.MEAN]
    for name, column in (("i3d", "source→target (i3d)"), ("tbn", "source→target (features)")):
        values = [target_top1(tmp_path / "runs" / f"{name}-{s}") for s in (0, 1)]
        mean, std, count = table.cell("source-only", column)
        assert count == 2 and mean == pytest.approx(np.mean(values))
    # one cache: the plain setting, as before
    assert aggregate.aggregate(run_dirs[:2]).columns == ["source→target"]


def test_a_sweeps_rows_per_cache_share_the_settings_columns(tmp_path):
    """A sweep of several caches labels its rows ``label (cache)``: each method reads one
    cache, so a setting stays one column (and --compare works across caches), instead of a
    column per cache where every row had one cell."""
    out = tmp_path / "sweep"
    entries = []
    for name, shift in (("i3d", 0.0), ("tbn", 2.0)):
        cache = tmp_path / f"{name}.zarr"
        make_feature_cache(cache, shift=shift, seed=int(shift))
        for source, target in (("source", "target"), ("target", "source")):
            run = f"{name}/so/{source}-{target}/seed0"
            _train_fast(cache, out / run, source=source, target=target)
            entries.append({"run": run, "method": f"SO ({name})", "head": "source-only",
                            "cache": name, "setting": f"{source}-{target}", "seed": 0,
                            "status": "complete", "error": ""})  # fmt: skip
    (out / "sweep.json").write_text(json.dumps({"spec": "s.yaml", "runs": entries}))
    table = aggregate.aggregate(aggregate.find_runs([out]))
    assert table.methods == ["SO (i3d)", "SO (tbn)"]
    assert table.columns == ["source→target", "target→source", aggregate.MEAN]
    for method in table.methods:
        assert all(table.cell(method, c)[2] == 1 for c in table.columns)
    gains = table.gains("SO (i3d)")
    assert all(not np.isnan(gains["SO (tbn)", c]) for c in table.columns)


def _train_fast(cache: Path, out: Path, *, seed: int = 0, source="source", target="target", **kw):
    overrides = {**FAST, **kw.pop("overrides", {})}
    train(cache=cache, head=kw.pop("head", "source-only"), source=[source], target=[target],
          out=out, seed=seed, overrides=overrides, progress=False, **kw)  # fmt: skip
    return out


def test_a_run_named_two_ways_is_one_seed_and_a_copied_run_is_refused(
    sweep_like, tmp_path, monkeypatch
):
    """``runs/x`` and ``/abs/runs/x`` are one run (a cell of 4 seeds from 3 runs before); two
    folders holding one method's seed 0 on one setting (a copied run) cannot make a cell."""
    monkeypatch.chdir(sweep_like)
    found = aggregate.find_runs(
        [sweep_like / "DANN_v2", Path("DANN_v2/source-target/seed0"), sweep_like / "DANN_v2"]
    )
    assert len(found) == 4
    table = aggregate.aggregate(found)
    assert table.cell("DANN_v2", "source→target")[2] == 2

    cache = make_feature_cache(tmp_path / "f.zarr", shift=1.0).path
    first = _train_fast(cache, tmp_path / "a")
    shutil.copytree(first, tmp_path / "copy")
    with pytest.raises(RunError, match="both seed 0 of source-only on source→target"):
        aggregate.aggregate(aggregate.find_runs([first, tmp_path / "copy"]))


def test_runs_of_one_protocol_role_with_other_configs_are_other_methods(tmp_path):
    """Under a protocol the row was the role's name whatever the config: lr 1e-7 (seed 0) and
    the default (seed 1) made one cell of 'two seeds'. Runs that differ are named apart."""
    cache = make_feature_cache(tmp_path / "f.zarr", shift=1.0).path
    nine = {"epochs": 9}  # the protocol's rule averages the last 9 checkpoints
    tiny = _train_fast(cache, tmp_path / "tiny", protocol="unified", overrides={**nine, "lr": 1e-7})
    default = _train_fast(cache, tmp_path / "default", seed=1, protocol="unified", overrides=nine)
    table = aggregate.aggregate([tiny, default])
    lr = runs.read_config(default)["head_config"]["lr"]
    assert table.methods == ["source-only (lr=1e-07)", f"source-only (lr={lr})"]
    for method in table.methods:
        assert table.cell(method, "source→target")[2] == 1
    # one config: the role's name alone
    again = _train_fast(cache, tmp_path / "again", seed=2, protocol="unified", overrides=nine)
    assert aggregate.aggregate([default, again]).methods == ["source-only"]


def test_epochs_a_schedule_derives_from_each_setting_do_not_split_a_method(tmp_path):
    """With the default steps schedule a setting's data size sets its epochs: the same
    command on two settings of other sizes is one method (a row with a Mean), not two."""
    from avda import cache as cache_lib
    from avda.cache import Status

    rows, rng = [], np.random.default_rng(0)
    for domain, per_class in (("small", 3), ("large", 9)):
        for split in ("train", "test"):
            for c in range(4):
                for i in range(per_class):
                    rows.append({"uid": f"{domain}-{split}-{c}-{i}", "video_id": "v",
                                 "domain": domain, "split": split, "start_sec": 0.0,
                                 "stop_sec": 1.0, "verb_class": c})  # fmt: skip
    segments = pd.DataFrame(rows)
    store = cache_lib.create(
        tmp_path / "sizes.zarr", segments, manifest_sha256="0" * 64, recipe={"name": "sizes"}
    )
    store.add_modality("rgb", num_clips=1, num_features=4, info={"backbone": "synthetic"})
    n = len(segments)
    x = rng.normal(size=(n, 1, 4)) + segments["verb_class"].to_numpy()[:, None, None]
    store.write("rgb", np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)
    steps = {"reference_segments": 24, "batch_size": 4, "hidden_dim": 8}
    run_dirs = []
    for source, target in (("small", "large"), ("large", "small")):
        for seed in (0, 1):
            out = tmp_path / f"{source}-{seed}"
            train(cache=store.path, head="source-only", source=[source], target=[target],
                  out=out, seed=seed, overrides=steps, progress=False)  # fmt: skip
            run_dirs.append(out)
    epochs = {runs.read_config(r)["head_config"]["epochs"] for r in run_dirs}
    assert len(epochs) == 2  # 2 and 6 epochs: the derived field differs between settings
    table = aggregate.aggregate(run_dirs)
    assert table.methods == ["source-only"]
    assert table.cell("source-only", aggregate.MEAN)[2] == 2
    # a field the user set otherwise on one setting is another method, not a setting's data
    other = tmp_path / "large-lr"
    train(cache=store.path, head="source-only", source=["large"], target=["small"], out=other,
          seed=0, overrides={**steps, "lr": 0.5}, progress=False)  # fmt: skip
    table = aggregate.aggregate([*run_dirs[:2], other])
    assert table.methods == ["source-only (lr=0.001)", "source-only (lr=0.5)"]


def test_an_unlabelled_run_with_another_config_is_not_merged_into_a_sweep_label(tmp_path):
    cache = make_feature_cache(tmp_path / "f.zarr", shift=1.0).path
    sweep = tmp_path / "sweep"
    _train_fast(cache, sweep / "source-only" / "seed0")
    index = {"runs": [{"run": "source-only/seed0", "method": "source-only", "seed": 0}]}
    (sweep / aggregate.SWEEP_INDEX).write_text(json.dumps(index))
    alone = _train_fast(cache, tmp_path / "alone", seed=1, overrides={"lr": 1e-2})
    table = aggregate.aggregate(aggregate.find_runs([sweep, alone]))
    assert table.methods == ["source-only", "source-only (lr=0.01)"]


def test_a_run_that_failed_in_its_sweep_is_left_out(sweep_like, tmp_path, caplog):
    """A sweep run refused (e.g. its folder holds a finished run of an earlier spec) is
    'failed' in sweep.json; the folder's older numbers must not fill the table."""
    out = tmp_path / "sweep"
    shutil.copytree(sweep_like, out)
    index = json.loads((out / aggregate.SWEEP_INDEX).read_text())
    failed = index["runs"][0]
    failed["status"] = "failed"
    (out / aggregate.SWEEP_INDEX).write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING):
        found = aggregate.find_runs([out])
    assert len(found) == 7 and out / failed["run"] not in found
    assert "failed in its sweep: left out" in caplog.text
    assert str(out / "sweep-failures.csv") in caplog.text
    table = aggregate.aggregate(found)
    assert table.cell("Source-only", "source→target")[2] == 1
    # the table says so itself (the warnings go to the terminal only)
    note = f"1 run(s) found but left out: {out / failed['run']} (failed in its sweep)."
    assert note in table.notes and note in tables.aggregate_markdown(table)
    # found through the folder above the sweep, or passed as a run folder itself: left out too
    assert len(aggregate.find_runs([tmp_path])) == 7
    with pytest.raises(RunError, match=r"none of the given runs is complete \(1 failed in"):
        aggregate.find_runs([out / failed["run"]])


def test_auto_scores_target_val_when_target_test_has_no_labels(tmp_path):
    """EPIC-100 UDA: target_test comes without labels, target_val with them; `--set auto`
    picked target_test because its predictions exist and scored nothing."""
    from avda import cache as cache_lib
    from avda.cache import Status

    rng = np.random.default_rng(0)
    rows = [
        {"uid": f"{d}_{s}_{i}", "video_id": "v", "domain": d, "split": s, "start_sec": 0.0,
         "stop_sec": 1.0, "verb_class": -1 if (d, s) == ("target", "test") else i % 3}
        for d, s in (("source", "train"), ("target", "train"), ("target", "val"),
                     ("target", "test"))
        for i in range(9)
    ]  # fmt: skip
    segments = pd.DataFrame(rows)
    store = cache_lib.create(tmp_path / "c.zarr", segments, manifest_sha256="0", recipe={})
    store.add_modality("rgb", num_clips=1, num_features=4, info={"backbone": "x"})
    n = len(segments)
    x = rng.normal(size=(n, 1, 4)) + segments["verb_class"].clip(0).to_numpy()[:, None, None]
    store.write("rgb", np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)
    run = _train_fast(store.path, tmp_path / "run")
    assert {"target_test", "target_val"} <= set(runs.prediction_sets(run))
    table = aggregate.aggregate([run])
    assert table.title.endswith("target_val: verb top1 (%)"), table.title
    val = runs.read_predictions(run, "target_val")
    expected = 100 * float(np.mean(val["scores"]["verb"].argmax(1) == val["labels"]["verb"]))
    assert table.cell("source-only", "source→target")[0] == pytest.approx(expected)


def test_every_head_stage_field_is_one_the_tables_treat_as_derived():
    """aggregate cannot import the heads (a layer above it): it names the schedule-derived
    fields by rule; a head with a stage field outside the rule would split its rows."""
    from avda.train import heads

    for name in heads.names():
        cls = heads.config_class(name)
        for field in (*cls.stage_fields, "epochs", "eval_every"):
            assert aggregate._is_derived(field), (name, field)
        assert not aggregate._is_derived("lr") and not aggregate._is_derived("hidden_dim")


def test_a_cell_over_fewer_seeds_than_the_others_is_marked():
    """One seed of a method failed: its mean is over 1 seed where the others have 2; the
    cell says so (n=1) in every format, and a paper's published row is not marked."""
    from avda.evaluate.aggregate import AggregateTable

    table = AggregateTable(
        "t",
        ["so", "dann", "paper"],
        ["a→b"],
        {("so", "a→b"): [85.4], ("dann", "a→b"): [80.0, 82.0], ("paper", "a→b"): [70.0]},
        {("so", "a→b"): [0], ("dann", "a→b"): [0, 1], ("paper", "a→b"): [0]},
        published={"paper"},
    )
    markdown = tables.aggregate_markdown(table)
    assert "| so | **85.4 (n=1)** |" in markdown and "| paper | 70.0 |" in markdown
    assert "81.0 ± 1.4 |" in markdown
    assert "(n=k): a cell over k seeds where others have 2." in markdown
    assert "85.4 (n=1)" in tables.aggregate_latex(table)
    assert "85.4 (n=1)" in tables.aggregate_html(table)
    table.values[("so", "a→b")].append(86.0)
    table.seeds[("so", "a→b")].append(1)
    assert "(n=" not in tables.aggregate_markdown(table)


def test_a_published_number_is_rounded_as_the_paper_prints_it():
    """CIA's published hmdb→ucf 94.05 is 94.1 at one decimal (half up), not 94.0: the float
    94.05 is 94.04999..., which f"{:.1f}" rounds down. Means and stds alike; no "-0.0"."""
    from avda.evaluate.aggregate import AggregateTable

    table = AggregateTable(
        "t",
        ["CIA", "so"],
        ["hmdb→ucf"],
        {("CIA", "hmdb→ucf"): [94.05], ("so", "hmdb→ucf"): [61.2, 61.3]},
        {("CIA", "hmdb→ucf"): [0], ("so", "hmdb→ucf"): [0, 1]},
        published={"CIA"},
    )
    markdown = tables.aggregate_markdown(table)
    assert "| CIA | 94.1 |" in markdown, markdown
    assert "61.3 ± 0.1" in markdown  # 61.25 and 0.0707: half up
    assert tables.format_mean_std_cell(-0.04, float("nan")) == "0.0"
    assert tables.format_mean_std_cell(2.675, 0.0, digits=2) == "2.68 ± 0.00"


def test_a_published_mean_averages_the_tables_settings(monkeypatch):
    """The Mean column averages the table's settings; a paper's Mean over its six settings
    beside ours over two compared different things. Kept where the row has exactly the
    table's settings, the mean of its cells where the paper has more or prints none, left
    out where it lacks one of them; a row that is only a mean is kept."""
    from avda.evaluate.aggregate import MEAN, AggregateTable

    def table():
        return AggregateTable(
            "t",
            ["ours"],
            ["D1→D2", "D2→D1", MEAN],
            {("ours", "D1→D2"): [40.0], ("ours", "D2→D1"): [50.0], ("ours", MEAN): [45.0]},
            {("ours", "D1→D2"): [0], ("ours", "D2→D1"): [0], ("ours", MEAN): [0]},
        )

    rows = {
        "six": {"D1-D2": 42.0, "D2-D1": 48.0, "D1-D3": 10.0, MEAN: 33.3},
        "two": {"D1-D2": 42.0, "D2-D1": 48.0, MEAN: 45.1},
        "bare": {"D1-D2": 41.0, "D2-D1": 46.0},
        "one": {"D1-D2": 41.0, MEAN: 30.0},
        "meanonly": {MEAN: 44.7},
    }
    monkeypatch.setattr(
        aggregate, "_published_entries", lambda infos: [{"source": "T1", "rows": rows}]
    )
    t = table()
    aggregate._add_published(t, [])
    assert t.cell("six [published]", MEAN)[0] == pytest.approx(45.0)  # not 33.3
    assert t.cell("two [published]", MEAN)[0] == pytest.approx(45.1)  # the paper's own
    assert t.cell("bare [published]", MEAN)[0] == pytest.approx(43.5)
    assert t.cell("one [published]", MEAN)[2] == 0  # 30.0 averages other settings
    assert t.cell("meanonly [published]", MEAN)[0] == pytest.approx(44.7)
    assert any("left out" in note for note in t.notes)
    assert any("mean of the row's cells" in note for note in t.notes)
    markdown = tables.aggregate_markdown(t)
    assert "| six [published] | 42.0 | 48.0 | 45.0 |" in markdown, markdown


def test_means_that_print_the_same_are_both_bold():
    """100.0 and 99.98 both print as 100.0 at one decimal: a reader sees a tie, so both are
    bold (only the first was); at two decimals only the first is."""
    from avda.evaluate.aggregate import AggregateTable

    table = AggregateTable(
        "t",
        ["dann", "so", "low"],
        ["a→b"],
        {("dann", "a→b"): [100.0], ("so", "a→b"): [99.9778], ("low", "a→b"): [99.9]},
        {("dann", "a→b"): [0], ("so", "a→b"): [0], ("low", "a→b"): [0]},
    )
    markdown = tables.aggregate_markdown(table)
    assert "| dann | **100.0** |" in markdown and "| so | **100.0** |" in markdown, markdown
    assert "| low | 99.9 |" in markdown
    two = tables.aggregate_markdown(table, digits=2)
    assert "| dann | **100.00** |" in two and "| so | 99.98 |" in two, two


def test_gain_is_paired_over_the_seeds_both_cells_have():
    # dann's seed 1 failed (no run): its mean over seeds 0 and 2 (58.5) minus source-only's
    # over 0, 1 and 2 (50.0) would count source-only's hard seed 1 (40) as a gain of 8.5; over
    # the seeds both have, the gain is mean(55 - 50, 62 - 60) = 3.5 (by hand)
    table = aggregate.AggregateTable(
        title="t",
        methods=["Source-only", "DANN", "MMD", "Paper [published]"],
        columns=["A→B"],
        values={
            ("Source-only", "A→B"): [50.0, 40.0, 60.0],
            ("DANN", "A→B"): [55.0, 62.0],
            ("MMD", "A→B"): [51.0, 43.0, 63.0],
            ("Paper [published]", "A→B"): [57.0],
        },
        seeds={
            ("Source-only", "A→B"): [0, 1, 2],
            ("DANN", "A→B"): [0, 2],
            ("MMD", "A→B"): [0, 1, 2],
            ("Paper [published]", "A→B"): [-1],
        },
        published={"Paper [published]"},
    )
    gains = table.gains("Source-only")
    assert gains[("DANN", "A→B")] == pytest.approx(3.5)
    assert table.paired("DANN", "Source-only", "A→B") == 2
    # the same seeds: the difference of the means, as before (= the paired mean)
    assert gains[("MMD", "A→B")] == pytest.approx(52.333333 - 50.0)
    assert table.paired("MMD", "Source-only", "A→B") is None
    # a published number has no seeds: its mean is compared
    assert gains[("Paper [published]", "A→B")] == pytest.approx(7.0)
    assert table.paired("Paper [published]", "Source-only", "A→B") is None
    markdown = tables.aggregate_markdown(table, baseline="Source-only")
    dann_line = next(line for line in markdown.splitlines() if line.startswith("| DANN"))
    assert "58.5 ± 4.9 (+3.5 over n=2) (n=2)" in dann_line
    assert "(+2.3)" in next(line for line in markdown.splitlines() if line.startswith("| MMD"))
    assert "(+g over n=k): the mean gain over Source-only on the k seeds" in markdown
    assert "over n=k" in tables.aggregate_latex(table, baseline="Source-only")
    assert "over n=k" in tables.aggregate_html(table, baseline="Source-only")
    assert "over n=k" not in tables.aggregate_markdown(table)  # no baseline, no gains
    row = tables.aggregate_frame(table, baseline="Source-only").set_index("method")
    assert row.loc["DANN", "A→B gain"] == pytest.approx(3.5)
    assert row.loc["DANN", "A→B gain seeds"] == 2
    assert row.loc["MMD", "A→B gain seeds"] == 3


def test_every_table_rounds_half_up_alike():
    # 0.5625 printed 56.2 in the runs table (f"{v:.1f}") and 56.3 in the paper layouts
    frame = pd.DataFrame({"run": ["a"], "target_val/verb/top1": [56.25]})
    assert tables.to_markdown(frame).splitlines()[-1] == "| a | 56.3 |"
    assert tables.format_mean_std_cell(56.25, float("nan")) == "56.3"
    assert tables.decimal_text(94.05, 1) == "94.1" and tables.decimal_text(-0.04, 1) == "0.0"


def test_the_runs_layout_leaves_out_an_unfinished_run_found_in_a_folder(sweep_like, tmp_path):
    # one run still training refused the whole `--layout runs` table of a sweep's folder (the
    # paper layouts leave it out with a note); a run named itself is still refused by name
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(sweep_like, copy)
    unfinished = sorted(p.parent for p in copy.rglob(runs.CONFIG))[0]
    (unfinished / runs.STATUS).unlink()
    table, _ = tables.evaluate_runs([copy], layout="runs")
    complete = [p.parent for p in copy.rglob(runs.STATUS)]
    assert len(table.splitlines()) == 2 + len(complete)
    with pytest.raises(RunError, match="not a complete run"):
        tables.evaluate_runs([unfinished], layout="runs")


def test_a_damaged_sweep_index_is_read_as_runs_in_path_order(sweep_like, tmp_path, caplog):
    # `avda evaluate OUT` stopped with an internal JSONDecodeError
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(sweep_like, copy)
    (copy / "sweep.json").write_text('{"runs": [')
    found = aggregate.find_runs([copy])
    assert sorted(found) == sorted(p.parent for p in copy.rglob(runs.CONFIG))
    assert "is not a readable sweep index" in caplog.text


def test_the_runs_layout_refuses_a_complete_run_whose_predictions_were_removed(
    sweep_like, tmp_path
):
    # its row had no metric columns at all (the others' NaN), with no word of why
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(sweep_like, copy)
    damaged = sorted(p.parent for p in copy.rglob(runs.STATUS))[0]
    (damaged / runs.PREDICTIONS / "target_test.npz").unlink()
    with pytest.raises(
        RunError, match=r"is complete but has no predictions for target_test \(.*target_test\.npz"
    ):
        tables.results_table([damaged])
    with pytest.raises(RunError, match="remove run.json and train it again"):
        tables.evaluate_runs([copy], layout="runs")


def test_a_paper_table_as_a_dataframe_wide_and_long():
    """``to_frame()``: mean / std / seeds per cell as ``cell`` gives them (hand values: dann's
    mean of 80 and 83 is 81.5, its sample std 2.1213); ``long=True``: one row per value."""
    from avda.evaluate.aggregate import AggregateTable

    table = AggregateTable(
        "t",
        ["so", "dann"],
        ["a→b", "b→a"],
        {("so", "a→b"): [70.0], ("dann", "a→b"): [80.0, 83.0], ("dann", "b→a"): [60.0]},
        {("so", "a→b"): [0], ("dann", "a→b"): [0, 1], ("dann", "b→a"): [1]},
    )
    wide = table.to_frame()
    assert list(wide.index) == ["so", "dann"]
    assert wide.loc["dann", ("a→b", "mean")] == pytest.approx(81.5)
    assert wide.loc["dann", ("a→b", "std")] == pytest.approx(2.1213, abs=1e-4)
    assert wide.loc["dann", ("a→b", "seeds")] == 2 and wide.loc["so", ("b→a", "seeds")] == 0
    assert np.isnan(wide.loc["so", ("b→a", "mean")]) and np.isnan(wide.loc["so", ("a→b", "std")])
    long = table.to_frame(long=True)
    assert list(long.columns) == ["method", "column", "seed", "value"]
    assert long.values.tolist() == [
        ["so", "a→b", 0, 70.0], ["dann", "a→b", 0, 80.0], ["dann", "a→b", 1, 83.0],
        ["dann", "b→a", 1, 60.0],
    ]  # fmt: skip


def test_html_caption_has_one_full_stop_between_its_notes():
    # The notes end with their own full stop and the HTML caption added another before the
    # next one: "... where others have 2.. 2 run(s) found but left out ..."
    from avda.evaluate.aggregate import AggregateTable

    table = AggregateTable(
        "t",
        ["so", "dann"],
        ["a→b"],
        {("so", "a→b"): [85.4], ("dann", "a→b"): [80.0, 82.0]},
        {("so", "a→b"): [0], ("dann", "a→b"): [0, 1]},
        notes=["1 run(s) found but left out: r (not complete)."],
    )
    caption = tables.aggregate_html(table).split("<caption>")[1].split("</caption>")[0]
    assert caption.endswith("where others have 2. 1 run(s) found but left out: r (not complete).")
    assert ".." not in caption


def test_a_folder_of_sweeps_keeps_each_sweeps_run_order(tmp_path):
    # `avda evaluate runs/` over runs/sw and runs/uni sorted the runs by path: "DANN" came
    # before "Source-only" (upper case first), and the table's rows with it
    root = tmp_path / "runs"
    order = {"sw": ["Source-only", "DANN", "adabn"], "uni": ["source-only", "dann"]}
    for sweep, labels in order.items():
        entries = []
        for label in labels:
            run = f"{label}/source-target/seed0"
            (root / sweep / run).mkdir(parents=True)
            (root / sweep / run / runs.CONFIG).write_text("head: source-only\n")
            entries.append({"run": run, "method": label, "status": "complete"})
        (root / sweep / aggregate.SWEEP_INDEX).write_text(json.dumps({"runs": entries}))
    (root / "loose" / "b").mkdir(parents=True)
    (root / "loose" / "b" / runs.CONFIG).write_text("head: dann\n")
    (root / "loose" / "a").mkdir(parents=True)
    (root / "loose" / "a" / runs.CONFIG).write_text("head: dann\n")
    found = aggregate.find_runs([root], complete_only=False)
    assert [str(p.relative_to(root)).split("/source-target")[0] for p in found] == [
        "sw/Source-only", "sw/DANN", "sw/adabn", "uni/source-only", "uni/dann",
        "loose/a", "loose/b",
    ]  # fmt: skip


def test_runs_outside_a_sweep_come_in_their_protocols_table_order(tmp_path):
    """Runs of `avda train --protocol` in one folder came out in path order (alphabetical:
    "a-mm-sada" before "c-source-only"), and so did the paper table's rows; they follow the
    protocol's table (source-only, adabn, ..., mm-sada), then runs without a protocol's role
    in path order. Runs given on the command line keep that order."""
    root = tmp_path / "runs"
    configs = {
        "0-plain": "head: dann\n",
        "a-mm-sada": "head: mm-sada\nprotocol: mmsada-epic55\nprotocol_role: mm-sada\n",
        "b-adabn": "head: adabn\nprotocol: mmsada-epic55\nprotocol_role: adabn\n",
        "c-source-only": "head: mm-sada\nprotocol: mmsada-epic55\nprotocol_role: source-only\n",
        "d-unified": "head: dann\nprotocol: unified\nprotocol_role: dann\n",
    }
    for name, text in configs.items():
        for setting in ("D2-D1", "D1-D2"):
            (root / name / setting).mkdir(parents=True)
            (root / name / setting / runs.CONFIG).write_text(text)
    found = aggregate.find_runs([root], complete_only=False)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "c-source-only/D1-D2", "c-source-only/D2-D1", "b-adabn/D1-D2", "b-adabn/D2-D1",
        "a-mm-sada/D1-D2", "a-mm-sada/D2-D1", "0-plain/D1-D2", "0-plain/D2-D1",
        "d-unified/D1-D2", "d-unified/D2-D1",
    ]  # fmt: skip
    given = [root / "a-mm-sada", root / "0-plain", root / "c-source-only"]
    found = aggregate.find_runs(given, complete_only=False)
    assert [p.parent.name for p in found[::2]] == ["a-mm-sada", "0-plain", "c-source-only"]


def test_a_sweep_run_that_failed_before_writing_its_folder_is_a_footnote(tmp_path, caplog):
    # A head config refused when the head is built fails before the run writes config.yaml:
    # `avda evaluate OUT --layout auto` lost the whole method without a note or a warning
    out = tmp_path / "sweep"
    (out / "so" / "s-t" / "seed0").mkdir(parents=True)
    (out / "so" / "s-t" / "seed0" / runs.CONFIG).write_text("head: source-only\n")
    (out / "bad" / "s-t").mkdir(parents=True)  # what the failed run left
    entries = [
        {"run": "so/s-t/seed0", "method": "so", "status": "complete"},
        {"run": "bad/s-t/seed0", "method": "bad", "status": "failed", "error": "ConfigError"},
    ]
    (out / aggregate.SWEEP_INDEX).write_text(json.dumps({"runs": entries}))
    for path in (out, tmp_path):  # the sweep's folder, or a folder above it
        found = aggregate.find_runs([path], complete_only=False)
        assert found == [out / "so" / "s-t" / "seed0"]
        assert found.left_out == [f"{out / 'bad' / 's-t' / 'seed0'} (failed in its sweep)"]
    assert "bad/s-t/seed0 failed in its sweep before it wrote its folder" in caplog.text
    shutil.rmtree(out / "so")
    with pytest.raises(RunError, match=r"none of the given runs is complete \(1 failed in"):
        aggregate.find_runs([out])


def test_a_sweep_run_not_started_is_a_footnote(tmp_path, caplog):
    # A sweep killed half way (SIGTERM, Ctrl-C; a SIGKILL leaves every entry pending) lists
    # the runs it had not started as pending, without a folder: `avda evaluate OUT` lost a
    # method none of whose runs had started (DANN of a killed 3-head sweep) without a word
    out = tmp_path / "sweep"
    (out / "so" / "s-t" / "seed0").mkdir(parents=True)
    (out / "so" / "s-t" / "seed0" / runs.CONFIG).write_text("head: source-only\n")
    entries = [
        {"run": "so/s-t/seed0", "method": "so", "status": "complete"},
        {"run": "dann/s-t/seed0", "method": "dann", "status": "pending", "error": ""},
    ]
    (out / aggregate.SWEEP_INDEX).write_text(json.dumps({"runs": entries}))
    for path in (out, tmp_path):  # the sweep's folder, or a folder above it
        found = aggregate.find_runs([path], complete_only=False)
        assert found == [out / "so" / "s-t" / "seed0"]
        assert found.left_out == [f"{out / 'dann' / 's-t' / 'seed0'} (not trained yet)"]
    assert (
        f"dann/s-t/seed0 is not trained yet (pending in its sweep {out / 'sweep.json'}): left "
        "out; run the sweep again to train it"
    ) in caplog.text


def test_a_folder_without_runs_is_refused_after_a_sweep_with_a_failed_run(tmp_path):
    # the count of runs failed before their folder was the whole call's: a folder holding no
    # run passed after a sweep with one such run was taken silently (before it: refused)
    out = tmp_path / "sweep"
    (out / "so" / "seed0").mkdir(parents=True)
    (out / "so" / "seed0" / runs.CONFIG).write_text("head: source-only\n")
    entries = [
        {"run": "so/seed0", "method": "so", "status": "complete"},
        {"run": "bad/seed0", "method": "bad", "status": "failed", "error": "ConfigError"},
    ]
    (out / aggregate.SWEEP_INDEX).write_text(json.dumps({"runs": entries}))
    (tmp_path / "empty").mkdir()
    for paths in ([tmp_path / "empty", out], [out, tmp_path / "empty"]):
        with pytest.raises(RunError, match=r"empty holds no avda run"):
            aggregate.find_runs(paths, complete_only=False)


def test_published_cells_are_keyed_as_the_specs_settings_are_written(monkeypatch):
    # A spec with `settings: ["source->target"]` and published rows under the same key: only
    # named settings (D1-D2, ...) were mapped to columns, so every row was dropped while the
    # footnote still cited the paper; a published block whose keys match no column cites none
    from avda.evaluate.aggregate import AggregateTable

    def table():
        return AggregateTable("t", ["ours"], ["source→target"], {("ours", "source→target"): [40.0]},
                              {("ours", "source→target"): [0]})  # fmt: skip

    rows = {"P": {"source->target": 50.0}, "Q": {"source-target": 45.5}, "R": {"source→target": 1}}
    entries = [{"source": "Table 9", "rows": rows}]
    monkeypatch.setattr(aggregate, "_published_entries", lambda infos: entries)
    t = table()
    aggregate._add_published(t, [])
    assert t.methods == ["ours", "P [published]", "Q [published]", "R [published]"]
    assert t.cell("Q [published]", "source→target")[0] == pytest.approx(45.5)
    assert "[published]: Table 9" in t.notes
    entries[0]["rows"] = {"P": {"D1-D2": 50.0}}
    t = table()
    aggregate._add_published(t, [])
    assert t.methods == ["ours"] and not any("[published]" in note for note in t.notes)


def _ranked_scores(labels: np.ndarray, ranks: list[int], classes: int) -> np.ndarray:
    """Probabilities where each segment's label is at 0-based rank ``ranks[i]``."""
    scores = np.zeros((len(labels), classes), dtype=np.float32)
    for i, (label, rank) in enumerate(zip(labels, ranks, strict=True)):
        others = [c for c in range(classes) if c != label]
        order = others[:rank] + [int(label)] + others[rank:]
        scores[i, order] = np.linspace(0.5, 0.01, classes)
    return scores / scores.sum(1, keepdims=True)


def _run_with_epochs(run: Path, protocol: str, role: str, epochs: list[dict]) -> Path:
    """A complete run whose last ``len(epochs)`` evaluations predicted ``epochs`` (each task
    -> (labels, scores)) on target_test."""
    tasks = list(epochs[0])
    runs.write_config(run, {
        "head": "ta3n", "source": ["ucf"], "target": ["hmdb"], "seed": 0,
        "tasks": [{"name": t, "num_classes": epochs[0][t][1].shape[1]} for t in tasks],
        "head_config": {"keep_last_predictions": len(epochs), "epochs": len(epochs)},
        "protocol": protocol, "protocol_role": role,
    })  # fmt: skip
    uids = np.array([f"s{i}" for i in range(len(epochs[0][tasks[0]][0]))])
    for number, predictions in enumerate(epochs, 1):
        for folder in (run / "epochs" / f"{number:04d}", run):
            runs.write_predictions(
                folder, "target_test", uids,
                {t: labels for t, (labels, _) in predictions.items()},
                {t: scores for t, (_, scores) in predictions.items()},
            )  # fmt: skip
    runs.mark_complete(run, {"epochs": len(epochs)})
    return run


def test_best_checkpoint_rule_reports_every_column_from_one_epoch(tmp_path, monkeypatch):
    """reduce="max" (the original TA3N's model_best) picks ONE epoch by the main metric, the
    first on a tie (their strict >), and reports every column from it: not each column's own
    maximum, which would take this run's top-5 from epoch 2 and its top-1 from epoch 1."""
    import dataclasses

    from avda import protocols

    base = protocols.get("ta3n-ucf-hmdb")
    rule = protocols.EvaluationRule(checkpoints=3, metrics=("top1", "top5"), reduce="max")
    monkeypatch.setitem(protocols.PROTOCOLS, base.name, dataclasses.replace(base, evaluation=rule))
    labels = np.arange(10) % 12
    # label ranks per segment (0: top-1, 1-4: top-5 only, 11: missed)
    ranks = {
        1: [0] * 6 + [11] * 4,  # top-1 0.6, top-5 0.6
        2: [0] * 5 + [1] * 5,  # top-1 0.5, top-5 1.0 (the best top-5)
        3: [0] * 6 + [2] * 3 + [11],  # top-1 0.6 (a tie with epoch 1), top-5 0.9
    }
    epochs = [{"verb": (labels, _ranked_scores(labels, ranks[e], 12))} for e in (1, 2, 3)]
    run = _run_with_epochs(tmp_path / "run", base.name, "ta3n", epochs)
    table = aggregate.aggregate([run], layout="settings")
    assert table.cell("ta3n", "ucf→hmdb top1")[0] == pytest.approx(60.0)
    assert table.cell("ta3n", "ucf→hmdb top5")[0] == pytest.approx(60.0)  # epoch 1's
    assert "checkpoint with the best top1 of the last 3" in table.title
    # the epic100 layout picks by action top-1 and reports verb and noun from that epoch
    epic = dataclasses.replace(
        base,
        evaluation=protocols.EvaluationRule(
            checkpoints=2, metrics=("epic100",), layout="epic100", reduce="max"
        ),
    )
    monkeypatch.setitem(protocols.PROTOCOLS, base.name, epic)
    verb, noun = np.arange(10) % 8, np.arange(10) % 9
    verb_ranks = {1: [0] * 9 + [11], 2: [0] * 6 + [11] * 4}  # verb top-1 0.9 / 0.6
    noun_ranks = {1: [11] * 7 + [0] * 3, 2: [0] * 10}  # action top-1 0.2 / 0.6
    epochs = [
        {
            "verb": (verb, _ranked_scores(verb, verb_ranks[e], 8)),
            "noun": (noun, _ranked_scores(noun, noun_ranks[e], 9)),
        }
        for e in (1, 2)
    ]
    run = _run_with_epochs(tmp_path / "epic", base.name, "ta3n", epochs)
    table = aggregate.aggregate([run], layout="epic100")
    assert table.cell("ta3n", "action top-1")[0] == pytest.approx(60.0)
    assert table.cell("ta3n", "verb top-1")[0] == pytest.approx(60.0)  # epoch 2's, not 90
    assert table.cell("ta3n", "noun top-1")[0] == pytest.approx(100.0)


def test_best_checkpoint_follows_the_task_and_metric_the_table_shows(tmp_path, monkeypatch):
    """reduce="max" under `avda evaluate --metric/--task`: the epoch with the best of what the
    table shows (--metric top5: epoch 2's top-5; --task noun: noun's best epoch), named in the
    title; without them the rule's first metric of the first task, as before. The per-class
    table of a --task picks the paper table's epoch for that task."""
    import dataclasses

    from avda import protocols
    from avda.evaluate import per_class

    base = protocols.get("ta3n-ucf-hmdb")
    rule = protocols.EvaluationRule(checkpoints=3, metrics=("top1",), reduce="max")
    monkeypatch.setitem(protocols.PROTOCOLS, base.name, dataclasses.replace(base, evaluation=rule))
    labels = np.arange(10) % 12
    verb_ranks = {
        1: [0] * 6 + [11] * 4,  # top-1 0.6 (the best top-1), top-5 0.6
        2: [0] * 5 + [1] * 5,  # top-1 0.5, top-5 1.0 (the best top-5)
        3: [0] * 4 + [2] * 3 + [11] * 3,  # top-1 0.4, top-5 0.7
    }
    noun_ranks = {1: [0] * 2 + [11] * 8, 2: [0] * 3 + [11] * 7, 3: [0] * 9 + [11]}  # 0.2/0.3/0.9
    epochs = [
        {
            "verb": (labels, _ranked_scores(labels, verb_ranks[e], 12)),
            "noun": (labels, _ranked_scores(labels, noun_ranks[e], 12)),
        }
        for e in (1, 2, 3)
    ]
    run = _run_with_epochs(tmp_path / "run", base.name, "ta3n", epochs)
    table = aggregate.aggregate([run], layout="settings")
    assert table.cell("ta3n", "ucf→hmdb")[0] == pytest.approx(60.0)  # verb top-1, epoch 1
    assert "checkpoint with the best top1 of the last 3" in table.title
    top5 = aggregate.aggregate([run], layout="settings", metric="top5")
    assert top5.cell("ta3n", "ucf→hmdb")[0] == pytest.approx(100.0)  # epoch 2's, not 1's 60
    assert "top5 of the checkpoint with the best top5 of the last 3" in top5.title
    noun = aggregate.aggregate([run], layout="settings", task="noun")
    assert noun.cell("ta3n", "ucf→hmdb")[0] == pytest.approx(90.0)  # epoch 3's, not 1's 20
    both = aggregate.aggregate([run], layout="settings", task="noun", metric="top5")
    assert both.cell("ta3n", "ucf→hmdb")[0] == pytest.approx(90.0)  # noun top-5, epoch 3
    classes = per_class.per_class([run], task="noun")
    accuracy = 100 * (epochs[2]["noun"][1].argmax(1) == labels)  # epoch 3's, per class
    for c in range(10):
        assert classes.cell("ta3n", "ucf→hmdb", c)[0] == pytest.approx(accuracy[c])


def test_best_checkpoint_under_set_source_test_is_chosen_on_the_source_set(tmp_path, monkeypatch):
    """reduce="max" scores the set --set names and picks the epoch on that same set: under
    --set source_test the best source top-1 (epoch 2), not the epoch that is best on target_test
    (epoch 1), whose source top-1 is lower (docs/protocols.md, ta3n-ucf-hmdb)."""
    import dataclasses

    from avda import protocols

    base = protocols.get("ta3n-ucf-hmdb")
    rule = protocols.EvaluationRule(checkpoints=2, metrics=("top1",), reduce="max")
    monkeypatch.setitem(protocols.PROTOCOLS, base.name, dataclasses.replace(base, evaluation=rule))
    labels = np.arange(10) % 12
    target = {1: [0] * 8 + [11] * 2, 2: [0] * 4 + [11] * 6}  # top-1 0.8 / 0.4
    source = {1: [0] * 3 + [11] * 7, 2: [0] * 7 + [11] * 3}  # top-1 0.3 / 0.7
    epochs = [{"verb": (labels, _ranked_scores(labels, target[e], 12))} for e in (1, 2)]
    run = _run_with_epochs(tmp_path / "run", base.name, "ta3n", epochs)
    uids = np.array([f"s{i}" for i in range(10)])
    for number in (1, 2):
        scores = {"verb": _ranked_scores(labels, source[number], 12)}
        for folder in (run / "epochs" / f"{number:04d}", run):
            runs.write_predictions(folder, "source_test", uids, {"verb": labels}, scores)
    on_target = aggregate.aggregate([run], layout="settings")
    assert on_target.cell("ta3n", "ucf→hmdb")[0] == pytest.approx(80.0)  # target's epoch 1
    on_source = aggregate.aggregate([run], layout="settings", eval_set="source_test")
    assert on_source.cell("ta3n", "ucf→hmdb")[0] == pytest.approx(70.0)  # source's epoch 2
    assert on_source.title.startswith("protocol ta3n-ucf-hmdb") and "source_test" in on_source.title


def test_published_rows_only_beside_the_protocols_own_numbers(tmp_path, monkeypatch):
    """A spec's published: rows are the protocol's table (its metric, each run's first task,
    the set --set auto scores); a table of --metric top5, --task noun or --set source_test
    printed the paper's top-1 on target_test beside ours as if they compared. They are left
    out with a note naming the option; --set target_test (what auto scores) and --metric top1
    keep them."""
    import dataclasses

    from avda import protocols

    base = protocols.get("ta3n-ucf-hmdb")
    rule = protocols.EvaluationRule(checkpoints=2, metrics=("top1",), reduce="max")
    monkeypatch.setitem(protocols.PROTOCOLS, base.name, dataclasses.replace(base, evaluation=rule))
    labels = np.arange(10) % 12
    scores = _ranked_scores(labels, [0] * 5 + [1] * 5, 12)  # top-1 50, top-5 100
    epochs = [{"verb": (labels, scores), "noun": (labels, scores)}] * 2
    out = tmp_path / "sweep"
    run = _run_with_epochs(out / "TA3N" / "ucf-hmdb" / "seed0", base.name, "ta3n", epochs)
    for folder in (run / "epochs" / "0001", run / "epochs" / "0002", run):
        runs.write_predictions(folder, "source_test", np.array([f"s{i}" for i in range(10)]),
                               {"verb": labels, "noun": labels},
                               {"verb": scores, "noun": scores})  # fmt: skip
    published = {"source": "Chen et al.", "rows": {"TA3N": {"ucf-hmdb": 78.33}}}
    (out / aggregate.SWEEP_INDEX).write_text(json.dumps({"runs": [], "published": published}))
    table = aggregate.aggregate([run], layout="settings")
    assert table.cell("TA3N [published]", "ucf→hmdb")[0] == pytest.approx(78.33)
    for option, kwargs in (
        ("--metric top5", {"metric": "top5"}),
        ("--task noun", {"task": "noun"}),
        ("--set source_test", {"eval_set": "source_test"}),
    ):
        other = aggregate.aggregate([run], layout="settings", **kwargs)
        assert "TA3N [published]" not in other.methods, option
        assert any(f"which {option} changes" in note for note in other.notes), other.notes
    for kwargs in ({"eval_set": "target_test"}, {"metric": "top1"}, {"task": "verb"}):
        same = aggregate.aggregate([run], layout="settings", **kwargs)
        assert "TA3N [published]" in same.methods, kwargs
    # a run with no target predictions scored on --set source_test: its table, the published
    # rows left out (asking which set --set auto would score refused the whole table)
    for folder in (run / "epochs" / "0001", run / "epochs" / "0002", run):
        (folder / runs.PREDICTIONS / "target_test.npz").unlink()
    other = aggregate.aggregate([run], layout="settings", eval_set="source_test")
    assert other.methods == ["ta3n"]  # no published row
    assert any("which --set source_test changes" in note for note in other.notes), other.notes


def _writes_interrupted_half_way(monkeypatch):
    """Every text file write stops half-way, interrupted (a kill leaves the same on disk)."""

    def half(self, data, *args, **kwargs):
        Path.write_bytes(self, data[: len(data) // 2].encode())
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half)


def test_an_interrupted_table_write_leaves_the_old_tables_whole(sweep_like, tmp_path, monkeypatch):
    """`avda evaluate -o` killed while writing: the tables of the last run stay (a table cut
    short, rows missing, was left before)."""
    table = aggregate.aggregate(aggregate.find_runs([sweep_like]))
    run_dirs = aggregate.find_runs([sweep_like], complete_only="below")
    written = tables.write_aggregate(table, tmp_path / "paper")
    written += tables.write_tables(tables.results_table(run_dirs), tmp_path / "runs")
    before = {path: path.read_bytes() for path in written}
    with monkeypatch.context() as patch:
        _writes_interrupted_half_way(patch)
        with pytest.raises(KeyboardInterrupt):
            tables.write_aggregate(table, tmp_path / "paper")
        with pytest.raises(KeyboardInterrupt):
            tables.write_tables(tables.results_table(run_dirs), tmp_path / "runs")
    assert {path: path.read_bytes() for path in written} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


def test_a_full_disk_writing_the_paper_tables_leaves_the_earlier_ones(
    sweep_like, tmp_path, monkeypatch
):
    """`avda evaluate --layout auto -o` (and --per-class) on a full disk: OUT.md was renamed
    into place before OUT.csv failed, a new .md beside an earlier .csv and .tex."""
    import errno

    from avda.evaluate import per_class

    table = aggregate.aggregate(aggregate.find_runs([sweep_like]))
    written = tables.write_aggregate(table, tmp_path / "paper")
    before = {path: path.read_bytes() for path in written}
    write_text = Path.write_text

    def full(self, *args, **kwargs):
        if ".csv" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        tables.write_aggregate(table, tmp_path / "paper", baseline=table.methods[0])
    assert {path: path.read_bytes() for path in written} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    monkeypatch.setattr(Path, "write_text", write_text)
    classes = per_class.evaluate([sweep_like])[0]
    written = per_class.write(classes, tmp_path / "pc")
    for path in written:  # an earlier evaluate's
        path.write_bytes(b"earlier")
    before = {path: path.read_bytes() for path in written}
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        per_class.write(classes, tmp_path / "pc")
    assert {path: path.read_bytes() for path in written} == before


def test_epic100_runs_scored_on_different_sets_are_named_in_a_warning_and_a_note(tmp_path, caplog):
    """The epic100 layout, as the settings one: a run whose target_test is unlabelled is
    scored on its target_val (--set auto), the others on target_test; the table averages both,
    so one warning and a note name each set and its runs."""
    labels = np.arange(10) % 4
    scores = _ranked_scores(labels, [0] * 6 + [1] * 4, 5)
    made = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        runs.write_config(run, {
            "head": "source-only", "source": ["D1"], "target": ["D2"], "seed": seed,
            "tasks": [{"name": "verb", "num_classes": 5}, {"name": "noun", "num_classes": 5}],
            "head_config": {},
        })  # fmt: skip
        uids = np.array([f"s{i}" for i in range(10)])
        both = {"verb": labels, "noun": labels}
        runs.write_predictions(run, "target_test", uids, both, {"verb": scores, "noun": scores})
        runs.mark_complete(run, {})
        made.append(run)
    odd = made[1]
    unlabelled = {"verb": np.full(10, -1), "noun": np.full(10, -1)}
    runs.write_predictions(odd, "target_test", np.array([f"s{i}" for i in range(10)]),
                           unlabelled, {"verb": scores, "noun": scores})  # fmt: skip
    runs.write_predictions(odd, "target_val", np.array([f"s{i}" for i in range(10)]),
                           {"verb": labels, "noun": labels},
                           {"verb": scores, "noun": scores})  # fmt: skip
    for layout in ("epic100", "auto"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="avda"):
            table = aggregate.aggregate(made, layout=layout)
        assert table.columns[0] == "verb top-1", layout  # the epic100 layout
        warned = [r.getMessage() for r in caplog.records if "different sets" in r.getMessage()]
        assert len(warned) == 1, (layout, caplog.text)
        assert f"target_val: {odd}" in warned[0] and f"target_test: {made[0]}" in warned[0]
        assert warned[0] in table.notes
        assert table.title.endswith("target_test, target_val: EPIC-100 verb, noun and action "
                                    "accuracy (%)"), table.title  # fmt: skip
    assert table.cell("source-only", "verb top-1")[0] == pytest.approx(60.0)  # both sets'
    alone = aggregate.aggregate(made[:1], layout="epic100")  # one set: no note
    assert not any("different sets" in note for note in alone.notes)


def test_published_rows_of_a_protocol_of_two_metrics_under_metric_one_of_them(tmp_path):
    """audio-adaptive-charadesego scores mAP-present and mAP-authors, a column of each;
    --metric mAP-authors shows one of them, still the protocol's table: its published
    mAP-authors numbers are kept in that column. Every published row was left out with a note
    that --metric changes the protocol's table, also a row keyed mAP-authors; a row of
    mAP-present alone is left out saying so, and none left out, no note."""
    labels = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]] * 2)
    scores = np.where(labels > 0, 0.6, 0.3) + np.linspace(0, 0.1, 32).reshape(8, 4)
    scores[0, 0] = 0.1  # one positive ranked last: mAP below 100
    out = tmp_path / "sweep"
    run = out / "Source-only" / "seed0"
    runs.write_config(run, {
        "head": "source-only", "source": ["third"], "target": ["first"], "seed": 0,
        "tasks": [{"name": "labels", "num_classes": 4, "multi_label": True}],
        "head_config": {}, "protocol": "audio-adaptive-charadesego",
        "protocol_role": "source-only",
    })  # fmt: skip
    uids = np.array([f"s{i}" for i in range(8)])
    runs.write_predictions(run, "target_test", uids, {"labels": labels}, {"labels": scores})
    runs.mark_complete(run, {})

    def table(rows, **kwargs):
        published = {"source": "Zhang et al.", "rows": rows}
        (out / aggregate.SWEEP_INDEX).write_text(json.dumps({"runs": [], "published": published}))
        return aggregate.aggregate([run], **kwargs)

    rows = {
        "AA": {"charades-ego mAP-authors": 26.3},
        "DANN": {"charades-ego mAP-present": 30.0},
        "Both": {"charades-ego mAP-present": 31.0, "charades-ego mAP-authors": 21.0},
    }
    both = table(rows)
    assert both.columns == ["third→first mAP-present", "third→first mAP-authors"]
    assert both.cell("Both [published]", "third→first mAP-authors")[0] == pytest.approx(21.0)
    for metric, kept, out_rows, other in (
        ("mAP-authors", {"AA": 26.3, "Both": 21.0}, "DANN, Both", "mAP-present"),
        ("mAP-present", {"DANN": 30.0, "Both": 31.0}, "AA, Both", "mAP-authors"),
        ("mAP", {"DANN": 30.0, "Both": 31.0}, "AA, Both", "mAP-authors"),  # mAP-present
    ):
        one = table(rows, metric=metric)
        assert one.columns == ["third→first"], metric
        assert one.methods == ["source-only", *(f"{r} [published]" for r in kept)], metric
        for row, value in kept.items():
            assert one.cell(f"{row} [published]", "third→first")[0] == pytest.approx(value)
        notes = "\n".join(one.notes)
        assert "changes (run without it to compare)" not in notes, notes
        assert f"[published] {other} numbers left out ({out_rows}): this table shows" in notes
        assert "[published]: Zhang et al." in notes
    # nothing left out by --metric: no note of it
    alone = table({"AA": {"charades-ego mAP-authors": 26.3}}, metric="mAP-authors")
    assert alone.methods == ["source-only", "AA [published]"]
    assert not any("left out" in note for note in alone.notes), alone.notes
    with pytest.raises(ConfigError, match="metric top1 does not apply"):
        table(rows, metric="top1")


def test_a_protocols_last_checkpoints_are_the_last_epochs_past_9999(tmp_path):
    """The loop names RUN/epochs/<epoch> f"{epoch:04d}", which a run of over 9999 epochs
    outgrows: sorted as text, 10000 came before 9998 and a protocol's last 2 checkpoints were
    9998 and 9999. They are taken by number: 9999 and 10000."""
    uids = np.array(["s0", "s1"])
    for epoch in (9998, 9999, 10000):
        scores = np.full((2, 3), float(epoch))
        runs.write_predictions(tmp_path / "epochs" / f"{epoch:04d}", "target_test", uids,
                               {"verb": np.array([0, 1])}, {"verb": scores})  # fmt: skip
    taken = aggregate.rule_predictions(tmp_path, "target_test", 2)
    assert [p["scores"]["verb"][0, 0] for p in taken] == [9999.0, 10000.0]
    assert [p.name for p in runs.epoch_folders(tmp_path)] == ["9998", "9999", "10000"]


def test_fields_a_protocol_sets_by_setting_do_not_split_a_method(tmp_path):
    """ta3n-ucf-hmdb trains hmdb->ucf with the script's H->U beta, gamma and target batch: the
    two directions of one command were two rows, 'ta3n (attentive_entropy_weight=0.003,
    beta=[0.75, 0.75, 0.5], target_batch_size=74)' with ucf->hmdb alone and its H->U twin,
    and no Mean (a new user's U->H and H->U runs). A value the user set stays a method."""
    protocol = protocols.get("ta3n-ucf-hmdb")
    base = dict(protocol.heads["ta3n"].values)

    def run(name: str, source: str, target: str, **values: Any) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        setting = protocol.per_setting.get(f"{source}-{target}", {}).get("ta3n", {})
        config = {"head": "ta3n", "head_config": {**base, **setting, **values},
                  "source": [source], "target": [target], "seed": 0,
                  "protocol": protocol.name, "protocol_role": "ta3n"}  # fmt: skip
        (folder / runs.CONFIG).write_text(yaml.safe_dump(config))
        return folder

    u_h, h_u = run("uh", "ucf", "hmdb"), run("hu", "hmdb", "ucf")
    assert {info.method for info in aggregate.describe_runs([u_h, h_u])} == {"ta3n"}
    lr = run("hu-lr", "hmdb", "ucf", lr=0.1)
    methods = {info.path.name: info.method for info in aggregate.describe_runs([u_h, lr])}
    assert methods == {"uh": "ta3n (lr=0.03)", "hu-lr": "ta3n (lr=0.1)"}
    # a beta the user set in one direction is another method, not the protocol's H->U beta
    beta = run("hu-beta", "hmdb", "ucf", beta=[0.5, 0.5, 0.5])
    methods = {info.path.name: info.method for info in aggregate.describe_runs([u_h, beta])}
    assert methods["uh"] != methods["hu-beta"]
    assert methods["hu-beta"] == "ta3n (beta=[0.5, 0.5, 0.5])"
