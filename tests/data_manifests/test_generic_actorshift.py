"""The generic table loader (column renames, file-row errors) and the ActorShift builder."""

from __future__ import annotations

import pandas as pd
import pytest

from avda.data_manifests import build
from avda.errors import ConfigError, ManifestError

ACTORSHIFT_CSV = """clip,actor,subset,start,end,label
k001,human,train,0,10,sleeping
k002,human,train,0,9.5,Watching_TV
y001,animal,train,0,8,eating
y002,animal,test,1.5,7,opening a door
y003,animal,test,0,6,
"""


def test_generic_renames_columns_and_values(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text(
        "clip,vid,dom,part,t0,t1,cls,name\n"
        "a,v1,kitchen,training,0,1.5,0,open\n"
        "b,v1,kitchen,testing,2,3,2,cut\n"
        "c,v2,garden,training,0,2,,\n"
    )
    result = build(
        "generic",
        path,
        columns={
            "uid": "clip",
            "video_id": "vid",
            "domain": "dom",
            "split": "part",
            "start_sec": "t0",
            "stop_sec": "t1",
            "verb_class": "cls",
            "verb": "name",
        },
        splits={"training": "train", "testing": "test"},
    )
    manifest = result.manifest
    assert manifest["split"].tolist() == ["train", "test", "train"]
    assert manifest["verb_class"].tolist()[:2] == [0, 2]
    assert pd.isna(manifest["verb_class"].iloc[2])
    assert result.classes == {"verb_class": ("open", "", "cut")}
    assert set(result.domains) == {"kitchen", "garden"}


def test_generic_reports_schema_problems_with_file_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "uid,video_id,domain,split,start_sec,stop_sec\n"
        "a,v1,D1,train,0,1\n"
        "a,v1,D1,train,2,1\n"
        "b,v1,D1,holdout,x,1\n"
    )
    with pytest.raises(ManifestError) as caught:
        build("generic", path)
    message = str(caught.value)
    assert "bad.csv row 3 [uid]: duplicate uid 'a' (first at row 2)" in message
    assert "bad.csv row 3 [stop_sec]: stop_sec 1 <= start_sec 2.0" in message
    assert "bad.csv row 4 [split]: split value(s) holdout are not train, val, test" in message
    assert "bad.csv row 4 [start_sec]: not a number: 'x'" in message


def test_generic_mapping_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("clip,video_id,domain,split,start_sec,stop_sec\na,v,D,train,0,1\n")
    with pytest.raises(ConfigError, match="unknown manifest column"):
        build("generic", path, columns={"clip_id": "clip"})
    with pytest.raises(ManifestError, match="has no column") as caught:
        build("generic", path, columns={"uid": "identifier"})
    # a missing column is no "malformed row", and the user's own files were never "released"
    assert "1 problem(s)" in str(caught.value) and "released" not in str(caught.value)
    with pytest.raises(ManifestError, match="required column 'uid' is missing"):
        build("generic", path)


def test_generic_reads_a_folder_of_parquet_and_csv(tmp_path):
    pd.DataFrame(
        {
            "uid": ["p1"],
            "video_id": ["v"],
            "domain": ["D1"],
            "split": ["train"],
            "start_sec": [0.0],
            "stop_sec": [1.0],
        }
    ).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text(
        "uid,video_id,domain,split,start_sec,stop_sec\nc1,v,D2,test,0,2\n"
    )
    result = build("generic", tmp_path)
    assert result.manifest["uid"].tolist() == ["p1", "c1"]
    (tmp_path / "c.csv").write_text(
        "uid,video_id,domain,split,start_sec,stop_sec\np1,v,D2,test,0,2\n"
    )
    with pytest.raises(ManifestError) as caught:
        build("generic", tmp_path)
    assert "c.csv row 2 [uid]: uid 'p1' is also at a.parquet record 1: uids must be unique" in (
        str(caught.value)
    )


def test_actorshift_maps_columns_and_class_names(tmp_path):
    path = tmp_path / "actorshift.csv"
    path.write_text(ACTORSHIFT_CSV)
    columns = {
        "uid": "clip",
        "video_id": "clip",
        "domain": "actor",
        "split": "subset",
        "start_sec": "start",
        "stop_sec": "end",
        "verb": "label",
    }
    result = build("actorshift", path, columns=columns)
    manifest = result.manifest
    assert manifest["verb_class"].tolist()[:4] == [0, 1, 2, 6]
    assert pd.isna(manifest["verb_class"].iloc[4])
    assert result.num_classes("verb_class") == 7
    assert set(result.settings) == {"actorshift"}
    assert result.settings["actorshift"].source_domains == ("human",)


def test_actorshift_reads_the_class_names_other_projects_spell_without_the_article(tmp_path):
    """The tables written for ActorShift's videos outside the paper spell class 6 "opening
    door" (pritamqu/OOD-VSSL's ``actor_shift.py`` class_dict, the HAC dataset card); the
    paper's "opening a door" was the only spelling read, so such a table failed with "class
    name(s) opening door are not in ..."."""
    path = tmp_path / "actorshift.csv"
    path.write_text(
        "clip,actor,subset,start,end,label\n"
        "door_1,animal,train,0,5,opening door\n"
        "tv_1,animal,test,0,5,watching tv\n"
        "x,human,train,0,10,Opening_the_door\n"
    )
    columns = {"uid": "clip", "video_id": "clip", "domain": "actor", "split": "subset",
               "start_sec": "start", "stop_sec": "end", "verb": "label"}  # fmt: skip
    manifest = build("actorshift", path, columns=columns).manifest
    assert manifest["verb_class"].tolist() == [6, 1, 6]
    # an unknown name is named as the file spells it ("Opening a dooor", not the key it is
    # looked up by, "opening dooor"), and one of articles alone ("The") is unknown, not an
    # empty name (an unlabelled row) once its articles are left out
    path.write_text(
        path.read_text() + "y,animal,train,0,5,Opening a dooor\nz,animal,test,0,5,The\n"
    )
    with pytest.raises(ManifestError) as caught:
        build("actorshift", path, columns=columns)
    assert "[verb]: class name(s) Opening a dooor, The are not in sleeping," in str(caught.value)


def test_actorshift_rejects_unknown_domains_and_classes(tmp_path):
    path = tmp_path / "actorshift.csv"
    path.write_text(ACTORSHIFT_CSV.replace("animal", "animals").replace("eating", "flying"))
    columns = {
        "uid": "clip",
        "video_id": "clip",
        "domain": "actor",
        "split": "subset",
        "start_sec": "start",
        "stop_sec": "end",
        "verb": "label",
    }
    with pytest.raises(ManifestError, match="are not human, animal"):
        build("actorshift", path, columns=columns)
    with pytest.raises(ManifestError, match="flying"):
        build("actorshift", path, columns=columns, domains={"animals": "animal"})


def test_actorshift_reports_every_problem_of_the_files_in_one_run(tmp_path):
    """A bad split, domain and class name and a uid repeated across files were four runs of
    ``avda manifest build``: the schema's problems (the split) were raised first, then the
    domains, then the classes, then the repeated uid. One run names them all, each with its
    file and rows."""
    folder = tmp_path / "actorshift"
    folder.mkdir()
    (folder / "a.csv").write_text(
        ACTORSHIFT_CSV.replace("animal,test,1.5", "animal,testing,1.5")
        .replace("k002,human", "k002,humans")
        .replace("eating", "flying")
    )
    (folder / "b.csv").write_text("clip,actor,subset,start,end,label\nk001,human,train,0,4,\n")
    columns = {"uid": "clip", "video_id": "clip", "domain": "actor", "split": "subset",
               "start_sec": "start", "stop_sec": "end", "verb": "label"}  # fmt: skip
    with pytest.raises(ManifestError) as caught:
        build("actorshift", folder, columns=columns)
    assert str(caught.value).splitlines() == [
        "actorshift annotations have 4 problem(s):",
        "  a.csv row 5 [split]: split value(s) testing are not train, val, test; rename them "
        "with the splits option: `--option splits=testing=test`",
        "  a.csv row 3 [domain]: domain value(s) humans are not human, animal; rename them "
        "with the domains option: `--option domains=humans=human`",
        "  a.csv row 4 [verb]: class name(s) flying are not in sleeping, watching tv, eating, "
        "drinking, swimming, running, opening a door; pass class_names with the dataset's "
        "class list",
        "  b.csv row 2 [uid]: uid 'k001' is also at a.csv row 2: uids must be unique across the "
        "files",
        "fix these in the annotation files (or with the options named) and run `avda manifest "
        "build` again",
    ]
    ids = ACTORSHIFT_CSV.replace(",label", ",label,cls").replace("\n", ",0\n")
    (folder / "b.csv").unlink()
    (folder / "a.csv").write_text(ids.replace("y001,animal,train,0,8,eating,0", "y001,animals,"
                                  "training,0,8,eating,9").replace("k001,human,train,0,10,"
                                  "sleeping,0", "k001,human,train,0,10,sleeping,12"))  # fmt: skip
    with pytest.raises(ManifestError) as caught:
        build("actorshift", folder, columns={**columns, "verb_class": "cls"})
    message = str(caught.value)
    assert "a.csv row 4 [split]: split value(s) training are not train, val, test" in message
    assert "a.csv row 4 [domain]: domain value(s) animals are not human, animal" in message
    assert "a.csv row 2, row 4 [verb_class]: class id(s) 9, 12 are outside the 7 classes" in (
        message
    )


def test_values_to_rename_are_one_problem_with_the_option_written_for_them(tmp_path):
    """A table saying Human/Animal and training/testing: each row's split was a problem of its
    own (the first five filled the error line; the splits option named nowhere), and the
    domain hint's example renamed other values (domains=humans=human,animals=animal)."""
    path = tmp_path / "actorshift.csv"
    pairs = [("Human", "training")] * 6 + [
        ("Animal", "testing"),
        ("Animal", "Validation"),
        ("ANIMAL", "holdout"),
    ]
    rows = [f"c{i},{actor},{subset},0,{i + 1},sleeping" for i, (actor, subset) in enumerate(pairs)]
    path.write_text("clip,actor,subset,start,end,label\n" + "\n".join(rows) + "\n")
    columns = {"uid": "clip", "video_id": "clip", "domain": "actor", "split": "subset",
               "start_sec": "start", "stop_sec": "end", "verb": "label"}  # fmt: skip
    with pytest.raises(ManifestError) as caught:
        build("actorshift", path, columns=columns)
    assert str(caught.value).splitlines() == [
        "actorshift annotations have 2 problem(s):",
        "  actorshift.csv row 2, row 3, row 4 and 6 more [split]: split value(s) Validation, "
        "holdout, testing, training are not train, val, test; rename them with the splits "
        "option: `--option splits=Validation=val,holdout=<train|val|test>,testing=test,"
        "training=train`",
        "  actorshift.csv row 2, row 3, row 4 and 6 more [domain]: domain value(s) ANIMAL, "
        "Animal, Human are not human, animal; rename them with the domains option: `--option "
        "domains=ANIMAL=animal,Animal=animal,Human=human`",
        "fix these in the annotation files (or with the options named) and run `avda manifest "
        "build` again",
    ]
    renamed = build(
        "actorshift",
        path,
        columns=columns,
        splits={"training": "train", "testing": "test", "Validation": "val", "holdout": "test"},
        domains={"ANIMAL": "animal", "Animal": "animal", "Human": "human"},
    )
    assert renamed.manifest["split"].tolist() == ["train"] * 6 + ["test", "val", "test"]
    assert renamed.manifest["domain"].tolist() == ["human"] * 6 + ["animal"] * 3
