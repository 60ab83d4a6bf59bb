"""benchmarks/adaptation.py's ``--variant`` rows: parsed as ``avda train --set`` parses values,
refused with one line when malformed, and a variant's runs are told apart from the defaults'."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
