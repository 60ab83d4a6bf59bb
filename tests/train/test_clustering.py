"""Audio clusters: the Elbow rules, KMeansElbow against scikit-learn, `avda cluster` on a cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from tests.conftest import make_feature_cache

from avda.cache import open_cache
from avda.errors import CacheError, ConfigError
from avda.train.clustering import (
    KMeansElbow,
    choose_elbow,
    chord_elbow,
    cluster_per_class,
    cluster_settings,
    cluster_store,
    kneedle_elbow,
    stored_clusters,
)

# kneed 0.8.6's own test cases (tests/test_sample.py, kneed/data_generator.py), offline, S = 1,
# interp1d: the values our re-implementation must reproduce.
CONVEX_DECREASING = [100, 40, 20, 15, 10, 5, 4, 3, 2, 1]
BUMPY = [7305.0, 6979.0, 6666.6, 6463.2, 6326.5, 6048.8, 6032.8, 5762.0, 5742.8, 5398.2, 5256.8,
         5227.0, 5001.7, 4942.0, 4854.2, 4734.6, 4558.7, 4491.1, 4411.6, 4333.0, 4234.6, 4139.1,
         4056.8, 4022.5, 3868.0, 3808.3, 3745.3, 3692.3, 3645.6, 3618.3, 3574.3, 3504.3, 3452.4,
         3401.2, 3382.4, 3340.7, 3301.1, 3247.6, 3190.3, 3180.0, 3154.2, 3089.5, 3045.6, 2989.0,
         2993.6, 2941.3, 2875.6, 2866.3, 2834.1, 2785.1, 2759.7, 2763.2, 2720.1, 2660.1, 2690.2,
         2635.7, 2632.9, 2574.6, 2556.0, 2545.7, 2513.4, 2491.6, 2496.0, 2466.5, 2442.7, 2420.5,
         2381.5, 2388.1, 2340.6, 2335.0, 2318.9, 2319.0, 2308.2, 2262.2, 2235.8, 2259.3, 2221.0,
         2202.7, 2184.3, 2170.1, 2160.0, 2127.7, 2134.7, 2102.0, 2101.4, 2066.4, 2074.3, 2063.7,
         2048.1, 2031.9]  # fmt: skip
FLAT_MAXIMA = [1, 0.787701317715959, 0.7437774524158126, 0.6559297218155198, 0.5065885797950219,
               0.36749633967789164, 0.2547584187408492, 0.16251830161054173, 0.10395314787701318,
               0.06734992679355783, 0.043923865300146414, 0.027818448023426062,
               0.01903367496339678, 0.013177159590043924, 0.010248901903367497,
               0.007320644216691069, 0.005856515373352855, 0.004392386530014641]  # fmt: skip


def _gamma_curve():
    np.random.seed(23)
    return np.arange(1, 1001), sorted(np.random.gamma(0.5, 1.0, 1000), reverse=True)


@pytest.mark.parametrize(
    "x, y, sensitivity, expected",
    [
        (np.arange(10), CONVEX_DECREASING, 1.0, 2.0),  # test_convex_decreasing
        (np.arange(7) / 10, np.array(CONVEX_DECREASING[:-3]) / 10, 1.0, 0.2),  # ..._truncated
        (np.arange(90), BUMPY, 1.0, 26.0),  # test_convex_decreasing_bumpy (interp1d)
        (*_gamma_curve(), 1.0, 22.0),  # test_gamma_online_offline (offline)
        (np.arange(18.0), FLAT_MAXIMA, 0.0, 1.0),  # test_flat_maxima, S = 0
        (np.arange(18.0), FLAT_MAXIMA, 1.0, 8.0),  # test_flat_maxima, S = 1
        ([1, 2, 3], [0.90483742, 0.81873075, 0.74081822], 1.0, None),  # test_y_no_knee
    ],
)
def test_kneedle_reproduces_kneed(x, y, sensitivity, expected):
    found = kneedle_elbow(np.asarray(x), np.asarray(y), sensitivity)
    if expected is None:
        assert found is None
    else:
        assert found == pytest.approx(expected)


def test_chord_rule_by_hand():
    # normalised x = [0, .25, .5, .75, 1], y = [1, .25, .125, .0625, 0];
    # distance to the chord x + y = 1 is 1 - x - y = [0, .5, .375, .1875, 0] -> k = 2
    assert chord_elbow(np.arange(1, 6), np.array([10.0, 4.0, 3.0, 2.5, 2.0])) == 2


def test_choose_elbow_fallbacks():
    ks = np.arange(1, 8)
    straight = 10.0 - ks  # Kneedle finds no knee on a straight line; the chord gives k = 1
    assert kneedle_elbow(ks, straight) is None
    assert choose_elbow(ks, straight) == 1
    assert choose_elbow(ks, np.full(7, 3.0)) == 1  # flat: one cluster
    assert choose_elbow(np.array([1, 2]), np.array([5.0, 1.0])) == 1  # too short for a knee
    with pytest.raises(ConfigError, match="knee rule"):
        choose_elbow(ks, straight, knee="max")


@pytest.mark.parametrize("centers", [2, 3, 4, 6])
def test_elbow_finds_the_known_number_of_clusters(centers):
    # Well separated centres (corners of a simplex, 10 apart), as the Elbow assumes.
    X, _ = make_blobs(
        n_samples=30 * centers, centers=np.eye(8)[:centers] * 10, cluster_std=1.0,
        random_state=centers,
    )  # fmt: skip
    estimator = KMeansElbow(max_clusters=12, n_init=3).fit(X)
    assert estimator.n_clusters_ == centers
    assert estimator.labels_.max() + 1 == centers


def test_kmeans_parity_with_scikit_learn():
    X, _ = make_blobs(n_samples=90, centers=3, n_features=5, random_state=0)
    estimator = KMeansElbow(max_clusters=6).fit(X)
    for k, inertia in zip(estimator.candidate_clusters_, estimator.inertias_, strict=True):
        plain = KMeans(n_clusters=int(k), init="k-means++", n_init=10, max_iter=300, random_state=0)
        assert inertia == pytest.approx(plain.fit(X).inertia_, rel=1e-12)
    plain = KMeans(
        n_clusters=estimator.n_clusters_, init="k-means++", n_init=10, max_iter=300, random_state=0
    ).fit(X)
    np.testing.assert_array_equal(estimator.labels_, plain.labels_)
    np.testing.assert_allclose(estimator.cluster_centers_, plain.cluster_centers_)
    assert estimator.inertia_ == pytest.approx(plain.inertia_)
    np.testing.assert_array_equal(estimator.predict(X[:7]), plain.predict(X[:7]))


def test_estimator_conventions():
    estimator = KMeansElbow(max_clusters=4, n_init=2, random_state=1)
    assert estimator.get_params() == {
        "max_clusters": 4, "knee": "kneedle", "sensitivity": 1.0, "n_init": 2,
        "max_iter": 300, "random_state": 1,
    }  # fmt: skip
    assert not [name for name in vars(estimator) if name.endswith("_")]  # nothing learned yet
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params()
    X = np.vstack([np.zeros((5, 2)), np.ones((5, 2))])  # two distinct points only
    assert estimator.fit(X) is estimator
    assert list(estimator.candidate_clusters_) == [1, 2]  # k capped at the distinct points
    assert estimator.n_features_in_ == 2
    np.testing.assert_array_equal(estimator.fit_predict(X), estimator.labels_)
    with pytest.raises(ConfigError, match="non-empty"):
        KMeansElbow().fit(np.zeros((0, 3)))
    with pytest.raises(ConfigError, match="max_clusters"):
        KMeansElbow(max_clusters=0).fit(X)


def test_cluster_per_class_ids_are_per_class():
    X, blob = make_blobs(n_samples=60, centers=4, n_features=3, cluster_std=0.3, random_state=2)
    classes = blob // 2  # two blobs per class
    result = cluster_per_class(X, classes, max_clusters=5, n_init=3)
    assert sorted(result) == [0, 1]
    for class_id, clusters in result.items():
        np.testing.assert_array_equal(np.sort(clusters.rows), np.flatnonzero(classes == class_id))
        assert clusters.n_clusters == 2
        assert len(clusters.inertias) == 5


def test_cluster_store_writes_clusters_with_provenance(tmp_path):
    store = make_feature_cache(tmp_path / "c.zarr", per_class=8, D=4)
    result = cluster_store(
        tmp_path / "c.zarr", source=["source"], max_clusters=4, n_init=2, progress=False,
        plot_dir=tmp_path / "plots",
    )  # fmt: skip
    ids, info = store.read_clusters("audio")
    segments = store.segments
    source_train = ((segments["domain"] == "source") & (segments["split"] == "train")).to_numpy()
    assert (ids[source_train] >= 0).all() and (ids[~source_train] == -1).all()
    group = info["groups"]["source"]
    assert group["domains"] == ["source"]
    assert group["settings"] == cluster_settings(
        task="verb", split="train", max_clusters=4, knee="kneedle", n_init=2, random_state=0
    )
    assert sorted(group["classes"]) == ["0", "1", "2", "3"]
    assert group["classes"]["0"]["count"] == 8 and len(group["classes"]["0"]["inertias"]) == 4
    for class_id, entry in group["classes"].items():
        members = source_train & (segments["verb_class"] == int(class_id)).to_numpy()
        assert ids[members].max() + 1 == entry["n_clusters"]
    assert len(result.plots) == 4 and all(p.stat().st_size > 0 for p in result.plots)
    assert "domain(s) 'source' (as a run's source): clusters per class" in result.summary()

    # A second source is added next to the first; a stored group is found by its settings.
    cluster_store(tmp_path / "c.zarr", source=["target"], max_clusters=4, n_init=2, progress=False)
    ids, info = store.read_clusters("audio")
    assert sorted(info["groups"]) == ["source", "target"]
    assert (ids[source_train] >= 0).all()
    settings = group["settings"]
    assert stored_clusters(store, "audio", ["source"], settings) is not None
    assert stored_clusters(store, "audio", ["source"], {**settings, "max_clusters": 5}) is None


def test_cluster_store_each_domain_and_errors(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=4, D=4)
    result = cluster_store(tmp_path / "c.zarr", max_clusters=2, n_init=1, progress=False)
    assert [g.key for g in result.groups] == ["source", "target"]
    with pytest.raises(CacheError, match="no 'flow' features"):
        cluster_store(tmp_path / "c.zarr", modality="flow", progress=False)
    with pytest.raises(CacheError, match="unknown source domain 'sorce'"):
        cluster_store(tmp_path / "c.zarr", source=["sorce"], progress=False)
    with pytest.raises(ConfigError, match="--max-k"):
        cluster_store(tmp_path / "c.zarr", max_clusters=0, progress=False)
    with pytest.raises(ConfigError, match="single-label"):
        cluster_store(tmp_path / "c.zarr", task="labels", progress=False)


def test_cluster_store_removes_what_a_killed_writer_left(tmp_path, caplog):
    """Zarr's temporary file of a write a killed writer never finished, and the hidden folder
    of a killed creation: `avda cluster`, the store's only writer (its lock exclusive),
    deletes both as extract and import do (it left them before)."""
    path = tmp_path / "c.zarr"
    make_feature_cache(path, per_class=8, D=4)
    unfinished = path / "clusters" / "zarr.json.0123456789abcdef0123456789abcdef.partial"
    unfinished.parent.mkdir(exist_ok=True)
    unfinished.write_bytes(b"half a write")
    creation = tmp_path / ".c.zarr.creating-123-0a1b2c3d"
    (creation / "features").mkdir(parents=True)
    cluster_store(path, source=["source"], max_clusters=2, n_init=1, progress=False)
    assert not unfinished.exists() and not creation.exists()
    assert "removing 1 unfinished write file of a killed writer" in caplog.text
    assert open_cache(path).verify().attrs.get("notes", []) == []


def test_an_elbow_plot_interrupted_while_written_leaves_the_old_one(tmp_path, monkeypatch):
    """Ctrl-C (or a kill) half-way through writing an elbow plot: the old PNG stays whole (a
    half one was left in its place, a broken image beside the run's results)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    make_feature_cache(tmp_path / "c.zarr", per_class=8, D=4)
    plots = tmp_path / "plots"
    options = dict(source=["source"], max_clusters=3, n_init=1, progress=False, plot_dir=plots)
    first = cluster_store(tmp_path / "c.zarr", **options).plots[0]
    before = first.read_bytes()
    real = Figure.savefig

    def half(self, target, **kwargs):
        real(self, target, **kwargs)
        Path(target).write_bytes(Path(target).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", half)
    with pytest.raises(KeyboardInterrupt):
        cluster_store(tmp_path / "c.zarr", **{**options, "max_clusters": 4})
    monkeypatch.undo()
    assert first.read_bytes() == before and sorted(plots.iterdir())[0] == first
    assert not [p for p in plots.iterdir() if p.suffix != ".png"]


_WRITE_CLUSTERS = """
import sys
import numpy as np
from avda.cache import open_cache
store = open_cache(sys.argv[1], mode="r+")
store.write_clusters("audio", np.full(store.num_segments, 7), {"groups": {"new": {}}})
"""


def _clustered(tmp_path):
    """A store whose audio clusters are written once: ids 0..N-1 mod 3, one group 'old'."""
    store = make_feature_cache(tmp_path / "c.zarr", per_class=4, D=4)
    store = open_cache(tmp_path / "c.zarr", mode="r+")
    before = np.arange(store.num_segments) % 3
    store.write_clusters("audio", before, {"groups": {"old": {}}})
    return store, before


def _assert_clusters(store, ids, groups):
    found, info = open_cache(store.path).read_clusters("audio")
    np.testing.assert_array_equal(found, ids)
    assert sorted(info["groups"]) == groups


def test_a_clusters_write_that_fails_midway_leaves_the_previous_clusters_whole(
    tmp_path, monkeypatch
):
    """write_clusters recreated its array before writing it: a failure (or a kill) midway
    left -1 everywhere and no provenance, the groups written earlier lost. The new array is
    written beside the store and swapped in; the old one stays until then."""
    import zarr

    store, before = _clustered(tmp_path)
    real = zarr.Array.__setitem__

    def fail_midway(self, key, value):
        real(self, slice(0, 5), np.asarray(value)[:5])  # a first chunk lands, then the fault
        raise OSError("disk full")

    monkeypatch.setattr(zarr.Array, "__setitem__", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        store.write_clusters("audio", np.full(store.num_segments, 7), {"groups": {"new": {}}})
    monkeypatch.undo()
    _assert_clusters(store, before, ["old"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]  # nothing left beside
    store.write_clusters("audio", np.full(store.num_segments, 7), {"groups": {"new": {}}})
    _assert_clusters(store, np.full(store.num_segments, 7), ["new"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]


@pytest.mark.parametrize("point", ["clusters-written", "clusters-aside", "sigkill"])
def test_a_killed_clusters_write_leaves_the_previous_clusters_whole(tmp_path, point):
    """A writer killed with the new array written, or between the two renames (old aside, new
    not in yet; by os._exit, and by a real SIGKILL while it waits there): readers get the
    previous clusters, and the next exclusive lock puts them back in place. The swap's arrays
    are inside the store (they were beside it: a copy of the store lost clusters put aside)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from avda.cache import faults
    from avda.cache.lock import store_lock

    store, before = _clustered(tmp_path)
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        faults.ENV: "pause:clusters-aside" if point == "sigkill" else f"exit:{point}",
        faults.MARKER_ENV: str(marker),
    }
    writer = subprocess.Popen([sys.executable, "-c", _WRITE_CLUSTERS, str(store.path)], env=env)
    if point == "sigkill":
        deadline = time.monotonic() + 60
        while not marker.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the writer never reached clusters-aside"
        os.kill(writer.pid, signal.SIGKILL)
    code = writer.wait(timeout=60)
    assert code == (-signal.SIGKILL if point == "sigkill" else faults.EXIT_CODE)
    _assert_clusters(store, before, ["old"])
    swap = store.path / ".avda-clusters-swap"  # inside the store: a copy of it takes them along
    left = sorted(p.name for p in swap.iterdir())
    assert left == (["audio.new"] if point == "clusters-written" else ["audio.new", "audio.old"])
    assert not list(tmp_path.glob(".*"))  # nothing beside it
    with store_lock(store.path, what="avda cluster"):  # what every writer alone takes
        pass
    assert not swap.exists()
    assert (store.path / "clusters" / "audio").is_dir()
    _assert_clusters(store, before, ["old"])


@pytest.mark.parametrize("layout", ["inside", "beside (an older avda's)"])
def test_clusters_a_kill_left_aside_are_named_by_verify_and_copied_with_the_store(
    tmp_path, capsys, layout
):
    """A write killed between its renames (a real process, os._exit there): `avda cache
    verify` said 'no problems' and nothing of the clusters out of place, and a copy of the
    store (without the hidden folder beside it) lost them. Verify names them aside and what
    puts them back, and a copy of the store alone keeps them; an aside an older avda left
    beside the store is read, named and put back too."""
    import os
    import shutil
    import subprocess
    import sys

    from avda import cli
    from avda.cache import faults
    from avda.cache.lock import store_lock

    store, before = _clustered(tmp_path)
    env = {**os.environ, faults.ENV: "exit:clusters-aside"}
    writer = subprocess.run([sys.executable, "-c", _WRITE_CLUSTERS, str(store.path)], env=env)
    assert writer.returncode == faults.EXIT_CODE
    if layout != "inside":
        _as_an_older_avda_left_them(store)
    problems = open_cache(store.path).verify()
    assert problems.empty
    aside = [note for note in problems.attrs["notes"] if "clusters/audio is not in place" in note]
    assert len(aside) == 1 and "killed between the two renames" in aside[0]
    assert "where readers read them; the next command that writes the store alone" in aside[0]
    assert ("avda-clusters-swap/audio.old" if layout == "inside" else ".old)") in aside[0]
    assert cli.main(["cache", "verify", "-q", str(store.path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert f"note: {aside[0]}" in out
    assert out[-1].endswith("chunks read; 2 notes above)")  # the aside and the unfinished new
    if layout == "inside":
        copy = tmp_path / "copy" / "c.zarr"
        shutil.copytree(store.path, copy, symlinks=True)  # the store alone
        _assert_clusters(open_cache(copy), before, ["old"])
        with store_lock(copy, what="avda cluster"):
            pass
        assert (copy / "clusters" / "audio").is_dir()
        _assert_clusters(open_cache(copy), before, ["old"])
    _assert_clusters(store, before, ["old"])
    with store_lock(store.path, what="avda cluster"):
        pass
    assert open_cache(store.path).verify().attrs["notes"] == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    _assert_clusters(store, before, ["old"])


_REWRITE_CLUSTERS = """
import sys
import numpy as np
from avda.cache import open_cache
store = open_cache(sys.argv[1], mode="r+")
print("opened", flush=True)
for version in range(1, 60):
    store.write_clusters("audio", np.full(store.num_segments, version), {"v": version})
"""


def test_a_reader_during_clusters_swaps_reads_one_array_whole(tmp_path):
    """Readers hold no lock (a training reads the clusters while `avda cluster` runs for
    other domains): a read overlapping a swap read the chunks of the old and the new array
    mixed, -1 for chunks whose files had gone, and the old provenance with the new ids. Each
    read is now of one array whole (a real second process swaps 59 times)."""
    import subprocess
    import sys

    make_feature_cache(tmp_path / "c.zarr", per_class=12, D=4, chunk_rows=2)
    store = open_cache(tmp_path / "c.zarr", mode="r+")
    store.write_clusters("audio", np.zeros(store.num_segments, int), {"v": 0})
    reader = open_cache(store.path)  # opened before the swaps, as a training's
    writer = subprocess.Popen(
        [sys.executable, "-c", _REWRITE_CLUSTERS, str(store.path)], stdout=subprocess.PIPE
    )
    reads = []
    try:
        assert writer.stdout.readline().strip() == b"opened"
        while writer.poll() is None:
            reads.append(reader.read_clusters("audio"))
    finally:
        writer.wait(120)
    assert writer.returncode == 0 and len(reads) >= 10
    for read in reads:
        assert read is not None
        ids, info = read
        assert set(ids.tolist()) == {info["v"]}, (sorted(set(ids.tolist())), info)


def test_clusters_of_a_store_reached_by_a_link_to_another_file_system_are_written(tmp_path):
    """The store is a link to another file system (/dev/shm here; a scratch disk on a
    cluster): the new clusters were written beside the link and their rename into the store
    failed (OSError: Invalid cross-device link), the new array left beside the link. They
    are written, and a killed write put back, beside the store the link leads to."""
    import os
    import shutil
    import uuid

    from avda.cache.store import restore_cluster_swaps

    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's folder")
    real = other / f"avda-test-{uuid.uuid4().hex}"
    real.mkdir()
    try:
        make_feature_cache(real / "c.zarr", per_class=4, D=4)
        (tmp_path / "c.zarr").symlink_to(real / "c.zarr")
        store = open_cache(tmp_path / "c.zarr", mode="r+")
        for version in (1, 2):  # the second puts the first aside
            store.write_clusters("audio", np.full(store.num_segments, version), {"v": version})
        ids, info = open_cache(tmp_path / "c.zarr").read_clusters("audio")
        assert set(ids.tolist()) == {2} and info == {"v": 2}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]
        assert sorted(p.name for p in real.iterdir()) == ["c.zarr"]
        # a kill between the renames, as an avda before 2026-12-07 left it beside the store:
        # put back through the link
        owner = store.provenance["cache_id"]
        aside = real / f".c.zarr.clusters-audio.{owner}.old"
        (real / "c.zarr" / "clusters" / "audio").rename(aside)
        restore_cluster_swaps(open_cache(tmp_path / "c.zarr"))
        assert not aside.exists()
        assert set(open_cache(tmp_path / "c.zarr").read_clusters("audio")[0].tolist()) == {2}
    finally:
        shutil.rmtree(real)


def _as_an_older_avda_left_them(store):
    """Move the swap's arrays a kill left in the store to where an avda before 2026-12-07
    wrote them: beside the store, named for its cache_id."""
    swap, owner = store.path / ".avda-clusters-swap", store.provenance["cache_id"]
    for array in swap.iterdir():
        modality, _, kind = array.name.rpartition(".")
        array.rename(store.path.with_name(f".c.zarr.clusters-{modality}.{owner}.{kind}"))
    swap.rmdir()


def test_clusters_a_kill_left_aside_are_not_those_of_a_store_made_anew_at_the_path(tmp_path):
    """A write killed between its renames (a real process, os._exit there) left the clusters
    aside beside the store (where an avda before 2026-12-07 put them); the store was then
    deleted and another made at its path (the aside is a hidden folder beside it): the new
    store read the deleted store's clusters as its own, and every exclusive writer of it (avda
    cluster, extract, import) failed with FileNotFoundError putting them back into its missing
    clusters/ folder. The aside is the old store's (named for its cache_id): the new store
    reads none, and its first exclusive writer deletes it."""
    import os
    import shutil
    import subprocess
    import sys

    from avda.cache import faults
    from avda.cache.lock import store_lock

    store, _ = _clustered(tmp_path)
    env = {**os.environ, faults.ENV: "exit:clusters-aside"}
    writer = subprocess.run([sys.executable, "-c", _WRITE_CLUSTERS, str(store.path)], env=env)
    assert writer.returncode == faults.EXIT_CODE
    _as_an_older_avda_left_them(store)
    assert sorted(p.suffix for p in tmp_path.glob(".c.zarr.clusters-audio.*")) == [".new", ".old"]
    shutil.rmtree(store.path)
    make_feature_cache(tmp_path / "c.zarr", per_class=2, D=4, seed=1)
    assert open_cache(tmp_path / "c.zarr").read_clusters("audio") is None
    with store_lock(tmp_path / "c.zarr", what="avda cluster"):
        pass
    assert not list(tmp_path.glob(".c.zarr.clusters-*"))
    assert open_cache(tmp_path / "c.zarr").read_clusters("audio") is None


def test_clusters_that_cannot_be_read_are_refused_as_they_are_not_as_a_looping_writer(tmp_path):
    """A clusters array whose metadata is damaged (no swap anywhere): dce9e86's read again
    loop took its error for a rename meanwhile and ended, 200 reads later, saying the clusters
    were replaced throughout by a looping avda cluster; the array's own error is raised."""
    store, _ = _clustered(tmp_path)
    (store.path / "clusters" / "audio" / "zarr.json").write_text("{")
    with pytest.raises((OSError, ValueError, KeyError)) as refused:
        open_cache(store.path).read_clusters("audio")
    assert "replaced throughout" not in str(refused.value)
