"""``avda report``: a self-contained HTML page, rendered in headless Chromium."""

from __future__ import annotations

import html
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.conftest import make_feature_cache
from tests.train.test_audio_adaptive_pipeline import _train as train_audio_adaptive
from tests.train.test_audio_adaptive_pipeline import make_audio_visual_cache

from avda import runs
from avda.errors import AvdaError
from avda.evaluate import aggregate, report, tables
from avda.scoring.metrics import confusion_matrix, per_class_accuracy
from avda.train.clustering import cluster_store
from avda.train.embedding import _shares, head_embedding
from avda.train.loop import train

HEADS = ("source-only", "dann")
SEEDS = (0, 1)
VERBS = ["take", "put", "open", "close"]
FIGURES_PER_RUN = [
    "training curves",
    "per-class accuracy (verb)",
    "confusion matrix (verb)",
    "embedding",
]
CLUSTER_FIGURES = ["cluster sizes (audio)", "Elbow curves (audio)"]
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const sizes = Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight]);
  const out = document.createElement('pre');
  out.id = 'avda-image-check';
  out.textContent = JSON.stringify(sizes);
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> list[Path]:
    """Real runs (two heads, two seeds each) on a cache whose classes are named and whose
    audio source segments were clustered (Elbow)."""
    root = tmp_path_factory.mktemp("report")
    cache = root / "features.zarr"
    make_feature_cache(cache, shift=1.5, verb_names=VERBS)
    cluster_store(
        cache, modality="audio", source=["source"], max_clusters=4, n_init=2, progress=False
    )
    run_dirs = []
    for head in HEADS:
        for seed in SEEDS:
            run = root / "runs" / f"{head}-{seed}"
            train(
                cache=cache,
                head=head,
                source=["source"],
                target=["target"],
                out=run,
                seed=seed,
                overrides={"epochs": 4, "hidden_dim": 32},
                progress=False,
            )
            run_dirs.append(run)
    return run_dirs


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.fail("headless Chromium is needed to render the report: apt-get install -y chromium")


def _chromium(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={workdir / 'chromium-profile'}",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def rendered_page(page: Path, workdir: Path) -> tuple[list[list], str]:
    """Load ``page`` in headless Chromium: each image's alt, naturalWidth, naturalHeight, and
    the text of the rendered DOM."""
    probe = workdir / "probe.html"
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    result = _chromium(workdir, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="avda-image-check">(.*?)</pre>', result.stdout, re.S)
    assert found, (
        f"Chromium did not run the check (rc {result.returncode}): {result.stderr[-2000:]}"
    )
    text = html.unescape(re.sub(r"<[^>]+>", " ", result.stdout.replace(found.group(0), "")))
    return json.loads(html.unescape(found.group(1))), " ".join(text.split())


def screenshot_spread(page: Path, workdir: Path) -> float:
    """Standard deviation of the pixels of a screenshot of ``page`` (0 for a blank page)."""
    from matplotlib.image import imread

    shot = workdir / "shot.png"
    result = _chromium(workdir, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), f"no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    return float(imread(shot)[..., :3].std())


def test_report_is_self_contained_and_every_figure_loads_in_chromium(trained, tmp_path):
    out = report.build_report(
        [p.parent for p in trained[:1]],
        tmp_path / "report.html",
        title="EPIC sweep",
        embed=head_embedding,
    )
    page = out.read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|file:|//)""", page)
    assert "<h1>EPIC sweep</h1>" in page and 'class="results"' in page
    assert "4 runs" in page and "dann · source→target · seed 1" in page
    alts = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,[A-Za-z0-9+/=]+">', page)
    # the seed view first, then every run, then the cache's clusters once (not once per run)
    assert alts == ["across seeds"] + FIGURES_PER_RUN * len(trained) + CLUSTER_FIGURES
    sizes, text = rendered_page(out, tmp_path)
    assert [alt for alt, _, _ in sizes] == alts
    broken = [alt for alt, width, height in sizes if width == 0 or height == 0]
    assert not broken, f"figures that did not load: {broken}"
    curves = {}
    for section in page.split('<section id="run-')[1:]:
        head = re.search(r"<h2>([\w-]+) · ", section).group(1)
        curves[head] = re.search(r"<figcaption>training curves: ([^<]+)<", section).group(1)
    assert "domain discriminator" not in curves["source-only"]  # no adversarial loss logged
    assert "domain discriminator" in curves["dann"]  # train/adversarial and grl_lambda
    assert "Elbow chose" in page
    # what a reader sees in the rendered page: the seed view and class names
    assert "Across seeds" in text and "mean ± std over seeds" in text
    # a protocol's table may take the best checkpoint (ta3n-ucf-hmdb), not only average them
    assert "may score others: the mean of its last ones, or its best" in text
    assert "Per class" in text and "per-class verb accuracy" in text
    for head in HEADS:
        row = re.search(rf"{head} source→target 0, 1 ((?:[\d.]+ ± [\d.]+ ?)+)", text)
        assert row, f"no seed row for {head} in: {text[:600]}"
    assert re.search(r"lowest: (take|put|open|close) \d+%", text)
    assert "by class: verb" in text
    assert text.count("audio clusters · features.zarr · audio · source source") == 2  # toc + h2
    assert screenshot_spread(out, tmp_path) > 0.05  # not a blank page


def test_seed_table_is_mean_and_sample_std_per_method_and_setting(trained):
    infos = aggregate.describe_runs(trained)
    per_run = tables.results_table(trained)
    table = report.seeds_table(infos, per_run)
    assert table["method"].tolist() == list(HEADS) and set(table["seeds"]) == {"0, 1"}
    column = "target_test/verb/top1"
    for head in HEADS:
        values = per_run.loc[per_run["head"] == head, column].to_numpy()
        mean, std = values.mean(), values.std(ddof=1)
        assert table.loc[table["method"] == head, column].item() == f"{mean:.1f} ± {std:.1f}"


def test_seed_groups_keep_protocols_apart_and_count_a_seed_once(tmp_path, caplog):
    # The across-seeds table averaged a source-only head with a protocol's source-only role
    # (a ta3n run) as two seeds, and a copied run as a second seed 0
    def info(name, method, seed, protocol=None):
        return aggregate.RunInfo(tmp_path / name, method, method, "s→t", ("s",), ("t",), seed,
                                 (), {}, protocol)  # fmt: skip

    infos = [
        info("a", "source-only", 0),
        info("b", "source-only", 0, "ta3n-epic100"),
        info("c", "dann", 0),
        info("c-copy", "dann", 0),
        info("d", "dann", 1),
    ]
    assert report.seed_groups(infos) == report.seed_groups(infos, warn=True)
    assert caplog.text.count("repeats seed 0") == 1  # warned once, by the caller that asks
    groups = report.seed_groups(infos)
    assert groups == {
        ("source-only [no protocol]", "s→t"): [0],
        ("source-only [ta3n-epic100]", "s→t"): [1],
        ("dann", "s→t"): [2, 4],
    }
    assert "c-copy repeats seed 0 of dann on s→t: left out" in caplog.text


def test_figures_name_classes_and_count_confusions():
    names = ["take", "put", "open", ""]  # class 3 has no name: its id is shown
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    predicted = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    counts = confusion_matrix(labels, predicted, 4)
    figure, caption = report.confusion_plot(counts, "verb", "target_test", names)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["take", "put", "open", "3"]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["take", "put", "open", "3"]
    cells = {(int(t.get_position()[1]), int(t.get_position()[0])): t.get_text() for t in axes.texts}
    assert cells == {(0, 0): "2", (0, 1): "1", (1, 1): "2", (2, 2): "1", (3, 2): "1", (3, 3): "1"}
    assert "most confused: take → put (1), 3 → open (1)" in caption
    values = per_class_accuracy(np.eye(4)[predicted], labels)
    figure, _, caption = report.per_class_plot(values, "verb", False, "target_test", names)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["take", "put", "open", "3"]
    assert caption.endswith("lowest: 3 50%, take 67%, put 100%")
    figure, caption = report.confusion_plot(np.diag(np.ones(40, int)), "verb", "t", None, 30)
    assert len(figure.axes[0].get_xticklabels()) == 30 and "30 most frequent of 40" in caption


def test_class_names_come_from_the_cache_segments(trained, tmp_path):
    from avda.cache import open_cache

    config = runs.read_config(trained[0])
    assert report.class_names(open_cache(config["cache"]).segments) == {"verb": VERBS}
    segments = open_cache(config["cache"]).segments.drop(columns=["verb"])
    assert report.class_names(segments) == {}
    # a cache's class tables win: EPIC-100's verb 0 is "take", narrated most as "pick-up" (the
    # report named it so)
    import shutil

    copy = tmp_path / "named.zarr"
    shutil.copytree(config["cache"], copy)
    store = open_cache(copy, mode="r+")
    official = [f"official-{i}" for i in range(len(VERBS))]
    store._set_provenance({**store.provenance, "classes": {"verb_class": official}})
    assert report.cache_class_names(copy) == {"verb": official}
    assert report.cache_class_names(config["cache"]) == {"verb": VERBS}


def test_embedding_is_coloured_by_domain_and_by_class(trained):
    embedding = report.run_embedding(trained[2], max_points=40, embed=head_embedding)
    assert embedding.task == "verb" and set(embedding.classes) == {0, 1, 2, 3}
    _, titles = report.embedding_plot(embedding, names=VERBS)
    assert titles[:4] == [
        "PCA: before (cache features), by domain",
        "PCA: before (cache features), by class",
        "PCA: after (head embedding), by domain",
        "PCA: after (head embedding), by class",
    ]


def test_after_embedding_is_the_heads_embedding(trained):
    embedding = report.run_embedding(trained[2], max_points=60, embed=head_embedding)
    assert embedding.before.shape == (60, 16 + 16)  # rgb + audio clip-averaged features
    assert embedding.after.shape == (60, 2 * 32)  # late fusion: hidden 32 per modality
    assert embedding.is_target.sum() == 30 and not embedding.after_is_scores
    assert np.isfinite(embedding.after).all()


def test_an_embedding_plots_as_many_points_as_asked(trained):
    """``--max-points 3`` plotted 2 (``max_points // 2`` per side); a side with fewer rows
    than its half leaves the rest to the other."""
    for asked in (3, 61):
        embedding = report.run_embedding(trained[2], max_points=asked, embed=head_embedding)
        assert len(embedding.after) == len(embedding.before) == asked
        assert embedding.is_target.sum() in (asked // 2, asked - asked // 2)
    assert _shares({"source": 100, "target": 20}, 60) == {"source": 40, "target": 20}
    assert _shares({"source": 5, "target": 20}, 60) == {"source": 5, "target": 20}


def test_a_staged_heads_embedding_shows_its_cache_features(tmp_path):
    """Audio-Adaptive (a staged head) reloads its stages read only, as avda predict does: the
    figure has its "before (cache features)" panels (it was refused and fell back to the
    prediction scores, "no cache features here", though the cache was there)."""
    cache = tmp_path / "av.zarr"
    make_audio_visual_cache(cache, source_counts=(6, 6, 6, 6), num_classes=4, target_per_class=6)
    run = tmp_path / "run"
    train_audio_adaptive(cache, run)
    stages = sorted(p.name for p in (run / "stages").iterdir())
    written = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    embedding = report.run_embedding(run, max_points=40, embed=head_embedding)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == written
    assert not embedding.after_is_scores and embedding.note == ""
    assert embedding.before is not None and len(embedding.before) == len(embedding.after)
    assert np.isfinite(embedding.after).all() and embedding.is_target.any()
    _, titles = report.embedding_plot(embedding)
    assert "PCA: before (cache features), by domain" in titles
    assert "no cache features" not in report.embedding_figure(embedding).caption
    assert sorted(p.name for p in (run / "stages").iterdir()) == stages  # nothing added
    # nor rewritten: a reload that writes its stage records again passed the names check


def test_embedding_falls_back_to_scores_when_the_cache_is_gone(trained, tmp_path):
    moved = tmp_path / "moved-run"
    shutil.copytree(trained[0], moved)
    config = runs.read_config(moved)
    config["cache"] = str(tmp_path / "elsewhere.zarr")
    (moved / runs.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    embedding = report.run_embedding(moved, max_points=40, embed=head_embedding)
    assert embedding.after_is_scores and embedding.before is None
    assert "could not be rebuilt" in embedding.note and len(embedding.after) == 40
    figure = report.embedding_figure(embedding)
    assert "prediction scores" in figure.caption
    assert report.cluster_info(moved) == []


def test_figures_score_target_val_when_target_test_is_unlabelled(tmp_path):
    """EPIC-100's target_test has no labels: the per-class and confusion figures read
    target_val, as the tables do (they read target_test and left every task out)."""
    from avda.evaluate.report import _target_set

    scores = {"verb": np.full((4, 3), 1 / 3, np.float32)}
    uids = np.array([f"s{i}" for i in range(4)])
    runs.write_predictions(tmp_path, "target_test", uids, {"verb": np.full(4, -1)}, scores)
    runs.write_predictions(tmp_path, "target_val", uids, {"verb": np.arange(4) % 3}, scores)
    assert _target_set(tmp_path) == "target_val"
    runs.write_predictions(tmp_path, "target_test", uids, {"verb": np.arange(4) % 3}, scores)
    assert _target_set(tmp_path) == "target_test"
    assert _target_set(tmp_path / "none") is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layout": "runs"}, "unknown --layout 'runs' for avda report; valid: auto, settings"),
        ({"baseline": "nobody"}, "--compare 'nobody' is not a method of this table; methods:"),
    ],
)
def test_report_refuses_a_layout_or_compare_it_cannot_show(trained, tmp_path, options, message):
    # Both were a note in the page (`no paper-style table: ...`) and exit 0: the report
    # looked finished while the table asked for was missing
    out = tmp_path / "report.html"
    with pytest.raises(AvdaError, match=re.escape(message)):
        report.build_report(trained, out, **options)
    assert not out.exists()


def test_a_page_named_other_than_html_is_refused_before_any_work(trained, tmp_path, capsys):
    # `avda report -o x.txt` wrote the HTML page into x.txt without a word
    from avda.cli import main

    out = tmp_path / "pages" / "report.txt"
    assert main(["report", str(trained[0]), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: -o {out}: avda report writes one HTML page; name it report.html"]
    assert not (tmp_path / "pages").exists()
    with pytest.raises(AvdaError, match="name it report.html"):
        report.build_report(trained[:1], out)
    assert not out.exists()


def test_the_page_written_is_said_once_on_stdout(trained, tmp_path, capsys, caplog):
    # "wrote report.html" was printed on stdout and logged on stderr ("wrote ... (0.4 MB)")
    from avda.cli import main

    out = tmp_path / "report.html"
    with caplog.at_level(logging.DEBUG, logger="avda"):
        assert main(["report", str(trained[0]), "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr()
    size = out.stat().st_size / 1e6
    assert printed.out == f"wrote {out} ({size:.1f} MB)\n"
    assert "wrote" not in printed.err
    assert not [r for r in caplog.records if "wrote" in r.getMessage()]


WIDTH_SCRIPT = """<script>
window.addEventListener('load', () => {
  const table = document.querySelector('table.results').getBoundingClientRect();
  const body = document.body.getBoundingClientRect();
  const out = document.createElement('pre');
  out.id = 'avda-width-check';
  out.textContent = JSON.stringify([table.right, body.right]);
  document.body.appendChild(out);
});
</script>"""


def test_results_table_stays_in_the_page_when_its_caption_is_long(trained, tmp_path):
    # The caption did not wrap (white-space: nowrap): a footnote (runs left out, with their
    # paths) made the table as wide as the whole caption, and its numbers were off the page
    runs_dir = tmp_path / "runs"
    shutil.copytree(trained[0].parent, runs_dir)
    for name in ("an-unfinished-run-with-a-long-name-a", "an-unfinished-run-with-a-long-name-b"):
        shutil.copytree(trained[0], runs_dir / name)
        (runs_dir / name / runs.STATUS).unlink()
    out = report.build_report([runs_dir], tmp_path / "report.html", max_detailed_runs=0)
    assert "found but left out" in out.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(out.read_text().replace("</body>", WIDTH_SCRIPT + "</body>"))
    result = _chromium(tmp_path, "--window-size=1200,900", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="avda-width-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"Chromium did not run the check (rc {result.returncode})"
    table_right, body_right = json.loads(found.group(1))
    assert table_right <= body_right + 1, (table_right, body_right)


def test_rebuilding_a_head_does_not_repeat_its_training_warnings(tmp_path, caplog):
    # `avda report` printed cia's "one visual modality (rgb): ... add flow for the consensus"
    # once per cia run, as if the report had a problem: the run had logged it when it trained
    cache = tmp_path / "features.zarr"
    make_feature_cache(cache, per_class=3)
    run = tmp_path / "cia"
    with caplog.at_level(logging.INFO, logger="avda"):
        train(cache=cache, head="cia", source=["source"], target=["target"], out=run,
              overrides={"epochs": 1}, progress=False)  # fmt: skip
        assert "one visual modality" in caplog.text  # what training says, once
        caplog.clear()
        embedding = head_embedding(run, 20)
    assert embedding.after.shape[0] == 20
    assert "one visual modality" not in caplog.text and "consensus over" not in caplog.text


def test_rebuilding_a_run_does_not_repeat_its_rows_warnings(tmp_path, caplog):
    """A target row without audio: `avda report` printed training's warning, with its hint
    `--set modalities=[rgb] leaves audio out`, again per run (4 lines for 3 runs on the
    shared media, whose demo.mp4 has no audio track)."""
    from avda.cache import Status, open_cache

    cache = tmp_path / "features.zarr"
    make_feature_cache(cache, per_class=3)
    store = open_cache(cache, mode="r+")
    rows = np.flatnonzero((store.segments["domain"] == "target").to_numpy())[:2]
    info = store.modality_info("audio")
    zeros = np.zeros((len(rows), info["num_clips"], info["num_features"]), dtype=np.float32)
    store.write("audio", rows, zeros, np.full(len(rows), int(Status.MISSING)), ["no audio"] * 2)
    run = tmp_path / "dann"
    with caplog.at_level(logging.INFO, logger="avda"):
        train(cache=cache, head="dann", source=["source"], target=["target"], out=run,
              overrides={"epochs": 1}, progress=False)  # fmt: skip
        assert "have no audio input" in caplog.text  # what training says
        caplog.clear()
        embedding = head_embedding(run, 20)
    assert embedding.after.shape[0] == 20
    assert "have no audio input" not in caplog.text and "modalities=" not in caplog.text


def test_report_shows_the_per_class_table_as_sklearn_counts_it(trained, tmp_path):
    # The report drew per-class bars per run but had no per-class table: a reader could not
    # see each class's accuracy as mean ± std over seeds beside the paper table
    from sklearn.metrics import recall_score

    out = report.build_report(trained, tmp_path / "report.html", max_detailed_runs=0)
    page = out.read_text()
    section = re.search(r'<section id="per-class"><h2>Per class</h2>(.*?)</section>', page, re.S)
    assert section, "no per-class section"
    found = re.search(r'<table class="per-class"><caption>(.*?)</caption>(.*?)</table>', page)
    caption, body = html.unescape(found.group(1)), found.group(2)
    assert "per-class verb accuracy" in caption and "mean ± std over seeds" in caption
    rows = [
        [html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)
    ]
    assert rows[0] == ["Setting", "Class", "Name", "Segments", *HEADS]
    assert rows[1][0] == "source→target"  # the setting heads its rows (rowspan)
    body_rows = [rows[1][1:], *rows[2:]]
    assert [r[1] for r in body_rows] == [*VERBS, ""] and body_rows[-1][0] == "Mean"
    paper = aggregate.aggregate(trained, metric="mca")
    for column, head in enumerate(HEADS, start=3):
        recalls = []
        for seed in SEEDS:
            predictions = runs.read_predictions(
                trained[HEADS.index(head) * 2 + seed], "target_test"
            )
            labels, scores = predictions["labels"]["verb"], predictions["scores"]["verb"]
            recalls.append(100 * recall_score(labels, scores.argmax(1), average=None))
        recalls = np.array(recalls)
        for c in range(len(VERBS)):
            mean, std = recalls[:, c].mean(), recalls[:, c].std(ddof=1)
            assert body_rows[c][2] == str(int(np.sum(labels == c)))
            assert body_rows[c][column] == tables.format_mean_std_cell(mean, std)
        mean, std, _ = paper.cell(head, "source→target")  # the Mean row is the table's mca
        assert mean == pytest.approx(recalls.mean(axis=1).mean())
        assert body_rows[-1][column] == tables.format_mean_std_cell(mean, std)


def _run_of_epochs(run: Path, protocol: str | None, epochs: list[np.ndarray], labels) -> Path:
    """A complete run of verb (4 classes) whose last ``len(epochs)`` evaluations scored
    ``epochs`` on target_test, its final predictions the last of them."""
    kept = {"keep_last_predictions": len(epochs), "epochs": len(epochs)}
    config = {"head": "source-only", "source": ["D1"], "target": ["D2"], "seed": 0,
              "cache": str(run / "absent.zarr"), "tasks": [{"name": "verb", "num_classes": 4}],
              "head_config": kept}  # fmt: skip
    if protocol is not None:
        config.update(protocol=protocol, protocol_role="source-only")
    runs.write_config(run, config)
    uids = np.array([f"s{i}" for i in range(len(labels))])
    for number, scores in enumerate(epochs, 1):
        for folder in (run / "epochs" / f"{number:04d}", run):
            runs.write_predictions(folder, "target_test", uids, {"verb": labels},
                                   {"verb": scores})  # fmt: skip
    runs.mark_complete(run, {"epochs": len(epochs)})
    return run


def test_per_run_class_figures_score_what_the_protocols_table_scores(tmp_path, monkeypatch):
    """The per-class and confusion figures of a run scored its final predictions, while the
    paper and per-class tables follow its protocol's rule (the mean of the last 9 checkpoints,
    the best of the last 30): each bar is now the run's per-class table cell, scikit-learn's
    recall of the checkpoints the rule scores, and the captions say which; a run that lacks
    them shows its final predictions, saying so."""
    from sklearn.metrics import recall_score

    from avda.evaluate import per_class

    shown: dict[str, list] = {"bars": [], "counts": []}
    plot_bars, plot_counts = report.per_class_plot, report.confusion_plot

    def bars(values, *args, **kwargs):
        shown["bars"].append(np.array(values))
        return plot_bars(values, *args, **kwargs)

    def counts(matrix, *args, **kwargs):
        shown["counts"].append(np.array(matrix))
        return plot_counts(matrix, *args, **kwargs)

    monkeypatch.setattr(report, "per_class_plot", bars)
    monkeypatch.setattr(report, "confusion_plot", counts)
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 4
    epochs = [rng.random((24, 4)) + 0.3 * np.eye(4)[labels] for _ in range(30)]
    cases = {  # protocol -> the epochs its table scores, what the captions say
        None: ([29], "of the final predictions"),
        "mmsada-epic55": (list(range(21, 30)), "of the mean of the last 9 checkpoints as"),
        "ta3n-ucf-hmdb": (None, "of the checkpoint its protocol's per-class table scores"),
    }
    for protocol, (scored, says) in cases.items():
        run = _run_of_epochs(tmp_path / str(protocol), protocol, epochs, labels)
        (info,) = aggregate.describe_runs([run])
        shown["bars"].clear(), shown["counts"].clear()
        figures = report.run_figures(info, names={})
        recall = [recall_score(labels, e.argmax(1), average=None, labels=range(4)) for e in epochs]
        if scored is None:  # the best top-1 of the 30, the first on a tie
            top1 = [float(np.mean(e.argmax(1) == labels)) for e in epochs]
            scored = [int(np.argmax(top1))]
            assert scored != [29], "the best is the last: the test would not tell"
        expected = np.mean([recall[e] for e in scored], axis=0)
        assert not np.allclose(expected, recall[29]) or protocol is None
        (values,) = shown["bars"]
        for class_id in range(4):  # every cell against scikit-learn's
            assert values[class_id] == pytest.approx(expected[class_id]), (protocol, class_id)
        table = per_class.per_class([run])
        for class_id in range(4):  # and the per-class table's cell of the run
            cell = table.cell("source-only", "D1→D2", class_id)[0]
            assert cell == pytest.approx(100 * values[class_id])
        (matrix,) = shown["counts"]
        expected_counts = sum(confusion_matrix(labels, epochs[e].argmax(1), 4) for e in scored)
        assert (matrix == expected_counts).all(), protocol
        captions = [f.caption for f in figures if "(verb)" in f.title]
        assert len(captions) == 2 and all(c.startswith(says) for c in captions), captions
    # a run keeping 1 of the 9 checkpoints its rule scores: its final predictions, said so
    short = _run_of_epochs(tmp_path / "short", "mmsada-epic55", epochs[-1:], labels)
    (info,) = aggregate.describe_runs([short])
    shown["bars"].clear()
    figures = report.run_figures(info, names={})
    assert shown["bars"][0] == pytest.approx(recall[29])
    caption = next(f.caption for f in figures if f.title == "per-class accuracy (verb)")
    assert caption.startswith("of the final predictions, not the mean of the last 9 checkpoints")
    assert "it kept 1 (keep_last_predictions)" in caption, caption
    # a run keeping the 9 with one damaged: not said to keep too few (it said 'does not keep
    # them'), the file named
    damaged = _run_of_epochs(tmp_path / "damaged", "mmsada-epic55", epochs[-9:], labels)
    broken = damaged / "epochs" / "0004" / "predictions" / "target_test.npz"
    broken.write_bytes(broken.read_bytes()[:100])
    (info,) = aggregate.describe_runs([damaged])
    figures = report.run_figures(info, names={})
    caption = next(f.caption for f in figures if f.title == "per-class accuracy (verb)")
    assert caption.startswith("of the final predictions, not the mean of the last 9 checkpoints")
    assert str(broken) in caption and "kept" not in caption, caption
    # a protocol this avda does not know: no table scores the run, its figures are still there
    gone = _run_of_epochs(tmp_path / "gone", "gone-protocol", epochs[-1:], labels)
    (info,) = aggregate.describe_runs([gone])
    figures = report.run_figures(info, names={})
    caption = next(f.caption for f in figures if f.title == "per-class accuracy (verb)")
    assert caption.startswith("of the final predictions (its protocol gone-protocol is unknown")


def test_a_multi_label_report_shows_the_ap_scikit_learn_gives(tmp_path, monkeypatch):
    """A CharadesEgo-style run (multi-label, 3 clips a video scored as their maximum): the
    report's results row, per-run mAP, per-class table and per-run AP bars against scikit-learn's
    ``average_precision_score`` over the videos with a positive; no confusion matrix (there
    was no multi-label ``avda report`` test)."""
    from sklearn.metrics import average_precision_score
    from tests.evaluate.test_max_over_clips import grouped_cache

    shown: list[np.ndarray] = []
    plot_bars = report.per_class_plot

    def bars(values, *args, **kwargs):
        shown.append(np.array(values))
        return plot_bars(values, *args, **kwargs)

    monkeypatch.setattr(report, "per_class_plot", bars)
    cache = grouped_cache(tmp_path / "charades.zarr")
    run_dirs, aps = [], []
    for seed in SEEDS:
        run = tmp_path / "runs" / f"so-{seed}"
        train(cache=cache, head="source-only", source=["third"], target=["first"], out=run,
              seed=seed, overrides={"epochs": 2, "hidden_dim": 16}, progress=False)  # fmt: skip
        run_dirs.append(run)
        predictions = runs.read_predictions(run, "target_test")
        videos: dict[str, list[int]] = {}
        for row, group in enumerate(predictions["groups"]):
            videos.setdefault(str(group), []).append(row)
        scores = np.stack([predictions["scores"]["labels"][r].max(axis=0) for r in videos.values()])
        truth = np.stack([predictions["labels"]["labels"][r[0]] for r in videos.values()])
        # every video has a positive and every class a video: none left out, none NaN
        assert (truth.sum(axis=1) > 0).all() and (truth.sum(axis=0) > 0).all()
        aps.append([average_precision_score(truth[:, c], scores[:, c]) for c in range(4)])
    aps = 100 * np.array(aps)  # (seeds, classes)
    page = report.build_report(run_dirs, tmp_path / "report.html", progress=False).read_text()

    def rows(table: str) -> list[list[str]]:
        return [
            [html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
        ]

    maps = aps.mean(axis=1)  # each seed's mAP over the classes with a positive
    results = re.search(r'<table class="results"><caption>(.*?)</caption>(.*?)</table>', page)
    assert "target_test: labels mAP (%); mean ± std over seeds" in html.unescape(results[1])
    cell = tables.format_mean_std_cell(maps.mean(), maps.std(ddof=1))
    assert rows(results[2]) == [["Method", "third→first"], ["source-only", f"<b>{cell}</b>"]]
    per_run = rows(re.search(r'<table class="dataframe runs">(.*?)</table>', page, re.S)[1])
    assert per_run[0][-2:] == ["target_test/labels/mAP", "target_test/labels/mAP-authors"]
    assert [r[-2] for r in per_run[1:]] == [tables.decimal_text(m, 1) for m in maps]
    # every class has a positive: the authors' convention is the same number
    assert [r[-1] for r in per_run[1:]] == [r[-2] for r in per_run[1:]]
    per_class = re.search(r'<table class="per-class"><caption>(.*?)</caption>(.*?)</table>', page)
    assert "per-class labels AP (%); mean ± std over seeds" in html.unescape(per_class[1])
    body = rows(per_class[2])
    assert body[0] == ["Setting", "Class", "Name", "Segments", "source-only"]
    positives = [str(int(n)) for n in truth.sum(axis=0)]
    expected = [
        [str(c), "", positives[c], tables.format_mean_std_cell(*_mean_std(aps[:, c]))]
        for c in range(4)
    ]
    assert [body[1][1:], *body[2:]] == [*expected, ["Mean", "", str(len(truth)), cell]]
    assert len(shown) == len(SEEDS)  # each run's AP bars, fractions
    for values, seed_aps in zip(shown, aps, strict=True):
        np.testing.assert_allclose(100 * values, seed_aps)
    alts = re.findall(r'<img alt="([^"]*)"', page)
    assert alts.count("per-class AP (labels)") == len(SEEDS)
    # its curves' panel is named for its mAP (it said "accuracy (%)")
    curves = "training curves: per epoch, from metrics.jsonl: training losses, mAP (%)"
    assert re.findall(r"<figcaption>(training curves: .*?)</figcaption>", page) == [curves] * 2
    assert not any(alt.startswith("confusion") for alt in alts)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1))
