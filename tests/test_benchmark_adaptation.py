"""benchmarks/adaptation.py's ``--variant`` rows: parsed as ``avda train --set`` parses values,
refused with one line when malformed, and a variant's runs are told apart from the defaults'."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adaptation.py"


@pytest.fixture(scope="module")
def adaptation():
    spec = importlib.util.spec_from_file_location("adaptation_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_variant_names_a_head_and_its_settings(adaptation):
    name, head, overrides = adaptation.parse_variant(
        "mm-sada+streams=mm-sada:stream_weight=1,lr_steps=[3, 6],domain_norm=false"
    )
    assert (name, head) == ("mm-sada+streams", "mm-sada")
    assert overrides == {"stream_weight": 1, "lr_steps": [3, 6], "domain_norm": False}
    assert adaptation.parse_variant("plain=dann") == ("plain", "dann", {})


@pytest.mark.parametrize("text", ["no-head", "x=not-a-head:lr=1", "=dann:lr=1", "x=dann:lr"])
def test_malformed_variant_is_one_line(adaptation, text):
    with pytest.raises(SystemExit, match="--variant"):
        adaptation.parse_variant(text)


def test_a_variants_runs_are_not_reused_as_the_defaults(adaptation):
    defaults = adaptation._defaults("mm-sada")
    variant = adaptation._defaults("mm-sada", {"stream_weight": 0.25})
    assert defaults["stream_weight"] != 0.25 and variant["stream_weight"] == 0.25
    assert {k: v for k, v in variant.items() if k != "stream_weight"} == {
        k: v for k, v in defaults.items() if k != "stream_weight"
    }


def test_the_oracle_row_learns_from_the_targets_labels(adaptation, tmp_path):
    """The reference row is fitted with the target's training labels: on a rotated target
    it beats the same classifier fitted on the source alone, and its record is a run's."""
    from sklearn.linear_model import LogisticRegression

    from avda.cache import synthetic

    sizes = {"source_train": 160, "target_train": 160, "target_test": 160, "source_test": 40,
             "features": 64}  # fmt: skip
    cache = tmp_path / "rotation.zarr"
    store = synthetic.generate(cache, family="rotation", seed=0, severity=1.3, **sizes)
    record = adaptation.oracle_record(cache, "rotation", "tiny", 0)
    assert record["head"] == adaptation.ORACLE and record["status"] == "ok"
    assert record["C"] in adaptation.ORACLE_CS and 0.0 <= record["target_mca"] <= 1.0

    # the same features and classifier without the target's labels (computed here, with
    # scikit-learn directly): the rotation moves the classes, the labels bring them back
    segments = store.segments
    labels = segments["verb_class"].to_numpy(dtype=int)
    domain, split = segments["domain"].to_numpy(str), segments["split"].to_numpy(str)
    columns = []
    for modality in sorted(store.modalities):
        x = store.load(modality).mean(axis=1, dtype=float)
        for name in ("source", "target"):
            fit = (domain == name) & (split == "train")
            x[domain == name] = (x[domain == name] - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
        columns.append(x)
    features = np.concatenate(columns, axis=1)
    source = (domain == "source") & (split == "train")
    test = (domain == "target") & (split == "test")
    model = LogisticRegression(C=record["C"], max_iter=3000).fit(features[source], labels[source])
    without = model.score(features[test], labels[test])
    assert record["target_top1"] > without + 0.1, (record["target_top1"], without)

    # through the benchmark's job runner (as the worker pool calls it): the same record, no
    # run folder; a cache that cannot be read is a failed record of one line, not an exception
    run = tmp_path / "runs" / "oracle-seed0"
    job = adaptation.Job(adaptation.ORACLE, "rotation", "tiny", 0, str(cache), str(run))
    assert adaptation.run_job(job)["target_top1"] == record["target_top1"]
    assert not run.exists()
    missing = adaptation.run_job(
        adaptation.Job(adaptation.ORACLE, "rotation", "tiny", 0, str(tmp_path / "no.zarr"), "")
    )
    assert missing["status"] == "failed" and "\n" not in missing["error"]
