"""``avda evaluate --per-class`` / ``--confusion`` over real runs, checked against scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, recall_score
from tests.conftest import make_feature_cache

import avda
from avda import cli, runs
from avda.errors import ConfigError
from avda.evaluate import aggregate, per_class, tables
from avda.train.loop import train

FAST = {"epochs": 2, "hidden_dim": 16}
VERBS = ["take", "put", "open", "close"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """2 methods x 2 seeds on one setting, indexed as ``avda sweep`` does; named classes."""
    root = tmp_path_factory.mktemp("per_class")
    cache = root / "features.zarr"
    make_feature_cache(cache, shift=2.5, verb_names=VERBS, per_class=10)
    out = root / "runs"
    entries = []
    for head, label in (("source-only", "Source-only"), ("dann", "DANN")):
        for seed in (0, 1):
            name = f"{label}/seed{seed}"
            train(
                cache=cache,
                head=head,
                source=["source"],
                target=["target"],
                out=out / name,
                seed=seed,
                overrides=FAST,
                progress=False,
            )
            entries.append({"run": name, "method": label, "seed": seed})
    (out / aggregate.SWEEP_INDEX).write_text(json.dumps({"runs": entries}))
    return out


def _truth(run: Path):
    predictions = runs.read_predictions(run, "target_test")
    scores, labels = predictions["scores"]["verb"], predictions["labels"]["verb"]
    return labels, scores.argmax(1), scores.shape[1]


def test_per_class_accuracy_is_sklearns_recall_mean_std_over_seeds(sweep):
    table = per_class.per_class(aggregate.find_runs([sweep]))
    assert table.methods == ["Source-only", "DANN"] and table.what == "accuracy"
    setting = "source→target"
    assert table.names[setting] == VERBS
    for method in table.methods:
        recalls = []
        for seed in (0, 1):
            labels, predicted, classes = _truth(sweep / method / f"seed{seed}")
            recalls.append(
                100 * recall_score(labels, predicted, labels=range(classes), average=None)
            )
            counts = np.bincount(labels, minlength=classes)
            assert list(table.segments[setting]) == list(counts)
        recalls = np.array(recalls)
        for c in range(4):
            mean, std, seeds = table.cell(method, setting, c)
            assert mean == pytest.approx(recalls[:, c].mean())
            assert std == pytest.approx(recalls[:, c].std(ddof=1))
            assert seeds == 2
        # the Mean row is the mean class accuracy, as the paper table's mca column
        mean, _, _ = table.cell(method, setting, None)
        assert mean == pytest.approx(recalls.mean(axis=1).mean())
    paper = aggregate.aggregate(aggregate.find_runs([sweep]), metric="mca")
    assert table.cell("DANN", setting, None)[0] == pytest.approx(paper.cell("DANN", setting)[0])
    frame = table.to_frame()
    row = frame[(frame["method"] == "DANN") & (frame["class"] == 2)].iloc[0]
    assert row["name"] == "open" and row["segments"] == table.segments[setting][2]


def test_cli_prints_the_table_writes_files_and_confusion_csvs(sweep, tmp_path, capsys):
    out = tmp_path / "tables" / "per_class"
    code = cli.main(["evaluate", str(sweep), "--per-class", "--confusion", "-o", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    table = per_class.per_class(aggregate.find_runs([sweep]))
    expected = table.cell("Source-only", "source→target", 1)
    line = next(line for line in stdout.splitlines() if line.startswith("| 1 | put |"))
    assert tables.format_mean_std_cell(expected[0], expected[1]) in line
    assert "wrote" not in stdout and f"wrote {out.with_suffix('.csv')}" in stderr
    frame = pd.read_csv(out.with_suffix(".csv"))
    assert set(frame.columns) == {
        *("setting", "class", "name", "segments", "method", "mean", "std", "seeds")
    }
    assert out.with_suffix(".md").exists() and out.with_suffix(".tex").exists()
    folder = tmp_path / "tables" / "per_class.confusion"
    total = 0
    for seed in (0, 1):
        labels, predicted, classes = _truth(sweep / "DANN" / f"seed{seed}")
        written = pd.read_csv(folder / "DANN" / "source-to-target" / f"seed{seed}.csv", index_col=0)
        assert list(written.index) == VERBS and list(written.columns) == VERBS
        expected = confusion_matrix(labels, predicted, labels=range(classes))
        np.testing.assert_array_equal(written.to_numpy(), expected)
        total = total + expected
    summed = pd.read_csv(folder / "DANN" / "source-to-target" / "sum.csv", index_col=0)
    np.testing.assert_array_equal(summed.to_numpy(), total)


def test_formats_and_the_python_api(sweep, tmp_path):
    table = avda.evaluate(sweep, per_class=True, confusion=True, out=tmp_path / "pc")
    assert isinstance(table, per_class.PerClassTable)
    assert (tmp_path / "pc.confusion" / "Source-only" / "source-to-target" / "sum.csv").exists()
    # -o OUT keeps a suffix that is not a table's, as the other tables do (pc.v1 wrote pc.md)
    written = per_class.write(table, tmp_path / "pc.v1")
    assert [p.name for p in written] == ["pc.v1.md", "pc.v1.csv", "pc.v1.tex"]
    assert per_class.confusion_folder(tmp_path / "pc.v1").name == "pc.v1.confusion"
    assert per_class.confusion_folder(tmp_path / "pc.md").name == "pc.confusion"
    latex = per_class.render(table, "latex")
    assert "\\begin{tabular}" in latex and "$\\pm$" in latex
    html = per_class.render(table, "html")
    assert '<th rowspan="5">source→target</th>' in html and '<td class="name">close</td>' in html
    assert "Mean: per seed the mean over the classes shown, the mean class accuracy" in html


def test_multi_label_is_ap_per_class_as_sklearn(tmp_path):
    """AP per class of the scored samples: one per score_group (a video), its score the
    maximum over its clips' rows, as the paper table's mAP."""
    from tests.evaluate.test_max_over_clips import grouped_cache

    cache = grouped_cache(tmp_path / "charades.zarr")
    run = tmp_path / "run"
    train(
        cache=cache,
        head="source-only",
        source=["third"],
        target=["first"],
        out=run,
        seed=0,
        overrides=FAST,
        progress=False,
    )
    table = avda.evaluate(run, per_class=True)
    assert table.what == "AP" and table.confusion == {}
    predictions = runs.read_predictions(run, "target_test")
    rows: dict[str, list[int]] = {}
    for row, group in enumerate(predictions["groups"]):
        rows.setdefault(str(group), []).append(row)
    assert len(rows) == 8 and len(predictions["groups"]) == 24
    scores = np.stack([predictions["scores"]["labels"][r].max(axis=0) for r in rows.values()])
    targets = np.stack([predictions["labels"]["labels"][r[0]] for r in rows.values()])
    keep = targets.sum(axis=1) > 0
    setting = "third→first"
    shown = []
    for c in range(scores.shape[1]):
        count = int(targets[keep, c].sum())
        assert table.segments[setting][c] == count
        if count:
            shown.append(100 * average_precision_score(targets[keep, c], scores[keep, c]))
            assert table.cell("source-only", setting, c)[0] == pytest.approx(shown[-1])
    assert table.cell("source-only", setting, None)[0] == pytest.approx(np.mean(shown))
    paper = aggregate.aggregate([run])
    assert paper.cell("source-only", setting)[0] == pytest.approx(np.mean(shown))
    mean_row = table.to_frame().iloc[-1]
    assert mean_row["name"] == "Mean" and mean_row["segments"] == keep.sum()
    page = per_class.render(table, "html")  # as avda report shows it
    assert "the scored samples with the class as a positive" in page and "mAP over" in page
    assert f'<tr class="mean"><td>Mean</td><td class="name"></td><td>{keep.sum()}</td>' in page
    with pytest.raises(ConfigError, match="multi-label"):
        avda.evaluate(run, per_class=True, confusion=True, out=tmp_path / "x")
    assert not (tmp_path / "x.md").exists()  # refused before any file is written
    # the classes are named by the cache's class table of the task, labels' too (CharadesEgo's
    # names were left out: only verb and noun tables were read)
    assert set(table.to_frame()["name"].iloc[:-1]) == {""}
    from avda.cache import open_cache

    store = open_cache(cache, mode="r+")
    names = ["hold clothes", "put clothes", "open door", "close door"]
    store._set_provenance({**store.provenance, "classes": {"labels": names}})
    named = avda.evaluate(run, per_class=True).to_frame().iloc[:-1]
    assert named["name"].tolist() == [names[int(c)] for c in named["class"]]


@pytest.mark.parametrize(
    ("args", "message", "keywords", "spoken"),
    [
        (["--confusion", "-o", "x"], "add --per-class", {"confusion": True, "out": "x"},
         "confusion=True writes the per-class table's matrices: add per_class=True"),
        (["--per-class", "--confusion"], "add -o OUT", {"per_class": True, "confusion": True},
         "confusion=True writes CSV files into OUT.confusion/: add out='OUT'"),
        (["--per-class", "--layout", "epic100"], "--per-class with --layout epic100",
         {"per_class": True, "layout": "epic100"},
         "per_class=True with layout='epic100': the per-class table scores one task (leave "
         "out layout, and choose the task with task='verb' or task='noun')"),
        (["--per-class", "--metric", "top5"], "leave out --metric",
         {"per_class": True, "metric": "top5"},
         "metric='top5' with per_class=True: its cells are each class's accuracy (AP for a "
         "multi-label task); leave out metric"),
        (["--per-class", "--layout", "auto", "--compare", "DANN"], "shows no gains",
         {"per_class": True, "layout": "auto", "compare": "DANN"},
         "compare='DANN' with per_class=True: the per-class table shows no gains; leave out "
         "compare"),
    ],
)  # fmt: skip
def test_bad_options_are_refused_in_one_line(
    sweep, args, message, keywords, spoken, tmp_path, monkeypatch, capsys
):
    """The command names its options, avda.evaluate its keywords: it said 'leave
    layout='out'', "compare='with' --per-class" (an option's next word taken for its value)
    and kept --confusion, --per-class and -o."""
    monkeypatch.chdir(tmp_path)
    code = cli.main(["evaluate", str(sweep), *args])
    stdout, stderr = capsys.readouterr()
    assert code != 0 and not stdout
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    with pytest.raises(ConfigError) as raised:
        avda.evaluate(sweep, **keywords)
    assert str(raised.value) == spoken
    assert not list(tmp_path.iterdir())


def test_a_protocols_rule_picks_the_checkpoints_as_the_paper_table_does(tmp_path, monkeypatch):
    """reduce="max": every class from the one epoch the main metric picks (epic100 rule: by
    action top-1), and its confusion matrix; reduce="mean": each class averaged over the last
    k checkpoints, as the paper table averages their top-1, and the confusion matrix summed
    over them (it was the final epoch's, whose diagonal disagreed with the table's cells)."""
    import dataclasses

    from tests.evaluate.test_tables_aggregate import _ranked_scores, _run_with_epochs

    from avda import protocols

    base = protocols.get("ta3n-ucf-hmdb")
    verb, noun = np.arange(12) % 3, np.arange(12) % 4
    verb_ranks = {1: [0] * 11 + [2], 2: [0] * 6 + [2] * 6}  # verb top-1 11/12, 6/12
    noun_ranks = {1: [0] * 12, 2: [2] * 9 + [0] * 3}  # action top-1 11/12 (epoch 1), at most 3/12
    epochs = [
        {
            "verb": (verb, _ranked_scores(verb, verb_ranks[e], 3)),
            "noun": (noun, _ranked_scores(noun, noun_ranks[e], 4)),
        }
        for e in (1, 2)
    ]
    run = _run_with_epochs(tmp_path / "run", base.name, "ta3n", epochs)
    expected = {
        e: 100 * recall_score(verb, epochs[e - 1]["verb"][1].argmax(1), average=None)
        for e in (1, 2)
    }
    matrices = {e: confusion_matrix(verb, epochs[e - 1]["verb"][1].argmax(1)) for e in (1, 2)}
    for rule, wanted, summed in (
        (dict(metrics=("epic100",), layout="epic100", reduce="max"), expected[1], matrices[1]),
        (dict(metrics=("top1",)), (expected[1] + expected[2]) / 2, matrices[1] + matrices[2]),
    ):
        evaluation = protocols.EvaluationRule(checkpoints=2, **rule)
        replaced = dataclasses.replace(base, evaluation=evaluation)
        monkeypatch.setitem(protocols.PROTOCOLS, base.name, replaced)
        table = per_class.per_class([run], task="verb")
        got = [table.cell("ta3n", "ucf→hmdb", c)[0] for c in range(3)]
        np.testing.assert_allclose(got, wanted)
        assert list(table.segments["ucf→hmdb"]) == [4, 4, 4]
        (matrix,) = table.confusion[("ta3n", "ucf→hmdb")]
        # the matrix of the epochs the cells score: the best one, or the last two summed
        np.testing.assert_array_equal(matrix, summed)
        np.testing.assert_allclose(100 * np.diag(matrix) / matrix.sum(axis=1), got)


def test_confusion_csvs_of_seeds_no_longer_evaluated_are_removed(tmp_path):
    # A second --confusion into the same -o with fewer seeds kept seed2.csv beside a sum.csv
    # that no longer counted it: the folder's seeds did not add up to its sum.
    def table(seeds):
        matrices = [np.eye(2, dtype=np.int64) * (s + 1) for s in seeds]
        return per_class.PerClassTable(
            task="verb", what="accuracy", sets=["test"], settings=["D1-D2"], methods=["A"],
            segments={"D1-D2": np.array([1, 1])}, names={}, values={}, samples={"D1-D2": 2},
            seeds={("A", "D1-D2"): list(seeds)}, confusion={("A", "D1-D2"): matrices},
        )  # fmt: skip

    out = tmp_path / "t"
    per_class.write_confusion(table([0, 1, 2]), out)
    written = per_class.write_confusion(table([0, 1]), out)
    place = per_class.confusion_folder(out) / "A" / "D1-D2"
    assert sorted(p.name for p in place.iterdir()) == ["seed0.csv", "seed1.csv", "sum.csv"]
    assert sorted(written) == sorted(place.iterdir())
    total = pd.read_csv(place / "sum.csv", index_col=0).to_numpy()
    seeds = sum(pd.read_csv(place / f"seed{s}.csv", index_col=0).to_numpy() for s in (0, 1))
    assert (total == seeds).all()


def test_a_clash_of_confusion_folders_is_refused_before_any_file_is_written(
    sweep, tmp_path, capsys
):
    # Two methods whose folder names are one (`x y` and `x_y` are both `x_y`) were refused
    # only at the second: OUT.md, OUT.csv, OUT.tex and the first method's CSVs were written
    import shutil

    runs_dir = tmp_path / "runs"
    shutil.copytree(sweep, runs_dir)
    index = json.loads((runs_dir / aggregate.SWEEP_INDEX).read_text())
    for entry in index["runs"]:
        entry["method"] = {"Source-only": "x y", "DANN": "x_y"}[entry["method"]]
    (runs_dir / aggregate.SWEEP_INDEX).write_text(json.dumps(index))
    out = tmp_path / "tables" / "pc"
    code = cli.main(["evaluate", str(runs_dir), "--per-class", "--confusion", "-o", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code != 0 and not stdout and len(stderr.strip().splitlines()) == 1
    assert "would share" in stderr and "'x y'" in stderr and "'x_y'" in stderr
    assert not [path for path in (tmp_path / "tables").rglob("*") if path.is_file()]


def test_runs_scored_on_different_sets_are_named_in_one_warning(sweep, tmp_path, capsys, caplog):
    # One run whose target_test has no labels is scored on its target_val (--set auto): its
    # cells were averaged with the others' target_test, only the title listing both sets
    import shutil

    runs_dir = tmp_path / "runs"
    shutil.copytree(sweep, runs_dir)
    odd = runs_dir / "DANN" / "seed1"
    test = runs.read_predictions(odd, "target_test")
    runs.write_predictions(odd, "target_val", test["uids"], test["labels"], test["scores"])
    unlabelled = {"verb": np.full_like(test["labels"]["verb"], -1)}
    runs.write_predictions(odd, "target_test", test["uids"], unlabelled, test["scores"])
    for args in (["--per-class"], ["--layout", "auto"]):  # and the paper table alike
        code = cli.main(["evaluate", str(runs_dir), *args])
        stdout, stderr = capsys.readouterr()
        assert code == 0, stderr
        warned = [line for line in stderr.splitlines() if "scored on different sets" in line]
        assert len(warned) == 1, stderr
        assert f"target_val: {odd}" in warned[0] and "target_test: " in warned[0]
        assert "--set" in warned[0] and "scored on different sets" in stdout  # the table's note
    # the Python API's warning names its keyword (the note named `avda evaluate --set`, a
    # command the rewrite leaves as it is)
    import avda

    with caplog.at_level("WARNING"):
        avda.evaluate(runs_dir, per_class=True)
    said = caplog.text + capsys.readouterr().err  # the CLI's handler, set up above, or pytest's
    warned = [line for line in said.splitlines() if "different sets" in line]
    assert warned and all("with eval_set (avda evaluate)" in line for line in warned), said
    assert "--set" not in said
    table = per_class.per_class(aggregate.find_runs([runs_dir]))
    assert table.sets == ["target_test", "target_val"]
    assert any(f"target_val: {odd}" in note for note in table.notes)
    alone = per_class.per_class(aggregate.find_runs([sweep]))
    assert not any("different sets" in note for note in alone.notes)
    # avda report shows the notes too, and has no --set: they name the command that has it
    from avda.evaluate import report

    page = report.build_report([runs_dir], tmp_path / "r.html", max_detailed_runs=0).read_text()
    assert page.count("score one set for all with --set (avda evaluate)") == 2  # both tables
    assert "choose one with --set" not in page
