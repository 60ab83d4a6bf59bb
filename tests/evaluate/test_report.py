"""``avda report``: a self-contained HTML page, rendered in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.conftest import make_feature_cache

from avda import runs
from avda.evaluate import report
from avda.train.clustering import cluster_store
from avda.train.loop import train

HEADS = ("source-only", "dann")
FIGURES_PER_RUN = [
    "training curves",
    "per-class accuracy (verb)",
    "confusion matrix (verb)",
    "embedding",
    "cluster sizes (audio)",
    "Elbow curves (audio)",
]
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
    """Two real runs on a cache whose audio source segments were clustered (Elbow)."""
    root = tmp_path_factory.mktemp("report")
    cache = root / "features.zarr"
    make_feature_cache(cache, shift=1.5)
    cluster_store(
        cache, modality="audio", source=["source"], max_clusters=4, n_init=2, progress=False
    )
    run_dirs = []
    for head in HEADS:
        run = root / "runs" / head
        train(
            cache=cache,
            head=head,
            source=["source"],
            target=["target"],
            out=run,
            seed=0,
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


def rendered_image_sizes(page: Path, workdir: Path) -> list[list]:
    """Load ``page`` in headless Chromium; each image's alt, naturalWidth, naturalHeight."""
    probe = workdir / "probe.html"
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={workdir / 'chromium-profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="avda-image-check">(.*?)</pre>', result.stdout, re.S)
    assert found, (
        f"Chromium did not run the check (rc {result.returncode}): {result.stderr[-2000:]}"
    )
    return json.loads(html.unescape(found.group(1)))


def test_report_is_self_contained_and_every_figure_loads_in_chromium(trained, tmp_path):
    out = report.build_report(
        [p.parent for p in trained[:1]], tmp_path / "report.html", title="EPIC sweep"
    )
    page = out.read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|file:|//)""", page)
    assert "<h1>EPIC sweep</h1>" in page and 'class="results"' in page
    assert "2 runs" in page and "dann · source→target · seed 0" in page
    alts = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,[A-Za-z0-9+/=]+">', page)
    assert alts == FIGURES_PER_RUN * len(HEADS)
    sizes = rendered_image_sizes(out, tmp_path)
    assert [alt for alt, _, _ in sizes] == alts
    broken = [alt for alt, width, height in sizes if width == 0 or height == 0]
    assert not broken, f"figures that did not load: {broken}"
    curves = {}
    for section in page.split("<section ")[1:]:
        head = re.search(r"<h2>([\w-]+) · ", section).group(1)
        curves[head] = re.search(r"<figcaption>training curves: ([^<]+)<", section).group(1)
    assert "domain discriminator" not in curves["source-only"]  # no adversarial loss logged
    assert "domain discriminator" in curves["dann"]  # train/adversarial and grl_lambda
    assert "Elbow chose" in page


def test_after_embedding_is_the_heads_embedding(trained):
    embedding = report.head_embedding(trained[1], max_points=60)
    assert embedding.before.shape == (60, 16 + 16)  # rgb + audio clip-averaged features
    assert embedding.after.shape == (60, 2 * 32)  # late fusion: hidden 32 per modality
    assert embedding.is_target.sum() == 30 and not embedding.after_is_scores
    assert np.isfinite(embedding.after).all()


def test_embedding_falls_back_to_scores_when_the_cache_is_gone(trained, tmp_path):
    moved = tmp_path / "moved-run"
    shutil.copytree(trained[0], moved)
    config = runs.read_config(moved)
    config["cache"] = str(tmp_path / "elsewhere.zarr")
    (moved / runs.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    embedding = report.run_embedding(moved, max_points=40)
    assert embedding.after_is_scores and embedding.before is None
    assert "could not be rebuilt" in embedding.note and len(embedding.after) == 40
    figure = report.embedding_figure(embedding)
    assert "prediction scores" in figure.caption
    assert report.cluster_info(moved) == []
