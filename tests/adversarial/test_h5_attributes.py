"""An HDF5 file that says it is an avda export but is damaged (issue 18, item 9): one line
naming the file and the fix, no store created. Before: ``internal error: KeyError``."""

from __future__ import annotations

import h5py
import pytest

from avda.cache import interop, schema
from tests.adversarial._cli import one_line, run
from tests.conftest import make_feature_cache


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("h5")
    make_feature_cache(root / "c.zarr", per_class=2)
    interop.export_h5(root / "c.zarr", root / "good.h5")
    return root / "good.h5"


def _damage_segments(handle):
    del handle["segments"]


def _damage_provenance(handle):
    handle.attrs[schema.ROOT_ATTRIBUTE] = "{not json"


def _damage_status(handle):
    del handle[schema.STATUS_GROUP]


@pytest.mark.parametrize("damage", [_damage_segments, _damage_provenance, _damage_status])
def test_a_damaged_avda_h5_is_one_line(capsys, tmp_path, exported, damage):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(exported.read_bytes())
    with h5py.File(bad, "r+") as handle:
        damage(handle)
    code, _, err = run(capsys, "cache", "import", bad, "-o", tmp_path / "new.zarr")
    line = one_line(err)
    assert code == 1 and "bad.h5" in line and "export it again" in line
    assert not (tmp_path / "new.zarr").exists()
