"""The lake loses nothing: parts checked against the manifest, repaired by a rerun, one writer,
marked lakes only are cleared, digests without timings, named errors for bad manifests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.lake import MARK, QUARANTINE, Lake, LakeError, StageSpec
from catalog.lake_lock import LOCK, LakeLocked, lake_lock
from stages.crawl import apply_duplicates, images_table, mark_duplicates
from tests.support import ROOT

SPEC = StageSpec("crawl", "images", {"sources": "d1"}, "c1", "k1")


def _images(rows):
    return pa.table({"url": [f"http://x/{i}.jpg" for i in rows], "row": list(rows), "status": ["ok"] * len(rows),
                     "bytes": [b"abc%d" % i for i in rows]})


def finished(tmp_path) -> Lake:
    """A crawl table of 3 parts x 2 rows with its manifest."""
    lake = Lake(tmp_path / "lake")
    assert lake.begin(SPEC) == "fresh"
    for start in (0, 2, 4):
        lake.write_part("images", _images(range(start, start + 2)), name=f"part-{start // 2:06d}")
    lake.finish(SPEC, lake.status_counts("images"))
    return lake


def redo_missing(lake: Lake) -> None:
    """What run_stage does on resume: write the rows whose key is missing, then finish."""
    done = lake.done_keys("images", "row")
    lake.write_part("images", _images([r for r in range(6) if r not in done]))
    lake.finish(SPEC, lake.status_counts("images"))


def test_manifest_lists_every_part(tmp_path):
    lake = finished(tmp_path)
    parts = lake.manifest("images")["parts"]
    assert [(p["name"], p["rows"]) for p in parts] == [(f"part-{i:06d}.parquet", 2) for i in range(3)]
    assert all(p["size"] == os.path.getsize(tmp_path / "lake" / "images" / p["name"]) for p in parts)


@pytest.mark.parametrize("damage", ["delete", "truncate", "stray"])
def test_damaged_table_is_detected_then_repaired_by_the_rerun(tmp_path, damage):
    lake = finished(tmp_path)
    part = tmp_path / "lake" / "images" / "part-000001.parquet"
    original = part.read_bytes()
    if damage == "delete":
        part.unlink()
        words = "part-000001.parquet (2 rows) listed in the manifest is missing"
    elif damage == "truncate":
        part.write_bytes(original[: len(original) // 2])
        words = "part-000001.parquet is"
    else:
        pq.write_table(pq.read_table(part), tmp_path / "lake" / "images" / "stray.parquet")
        words = "stray file stray.parquet"
    for call in (lambda: lake.read("images"), lambda: lake.digest("images")):
        with pytest.raises(LakeError, match="table 'images'") as e:
            call()
        assert words in str(e.value)

    assert lake.begin(SPEC) == "resume"  # same spec: not "cached" any more
    redo_missing(lake)
    t = lake.read("images")
    assert sorted(t.column("row").to_pylist()) == list(range(6))  # every row once, none twice
    assert lake.begin(SPEC) == "cached"
    kept = list((tmp_path / "lake" / QUARANTINE).rglob("*.parquet"))
    assert len(kept) == (0 if damage == "delete" else 1)  # the bad file is set aside, not deleted


def test_partitions_are_checked_when_the_whole_table_is_read(tmp_path):
    lake = Lake(tmp_path / "lake")
    pairs = pa.table({"pair_id": ["a"], "image_id": ["i"], "kind": ["degraded"], "status": ["ok"]})
    spec = StageSpec("degrade", "pairs/degraded", {}, "c", "k")
    lake.begin(spec)
    lake.write_part("pairs/degraded", pairs)
    lake.finish(spec, {"ok": 1})
    assert lake.read("pairs").num_rows == 1
    lake.files("pairs")
    os.remove(lake.files("pairs")[0])
    with pytest.raises(LakeError, match="pairs/degraded"):
        lake.read("pairs")


def test_digest_ignores_timings(tmp_path):
    lake = finished(tmp_path)
    d = lake.digest("images")
    time.sleep(0.01)
    lake.finish(SPEC, lake.status_counts("images"), {"seconds": 99.0})  # re-finished, same content
    assert lake.digest("images") == d
    lake.finish(SPEC, {"ok": 5})
    assert lake.digest("images") != d


def test_corrupt_manifest_names_the_file(tmp_path):
    lake = finished(tmp_path)
    path = tmp_path / "lake" / "images" / "_manifest.json"
    path.write_text('{"spec": ')
    with pytest.raises(LakeError, match=str(path)):
        lake.begin(SPEC)


def test_folders_without_the_mark_are_never_cleared(tmp_path):
    photo = tmp_path / "mine" / "images" / "holiday" / "IMG_0001.jpg"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(b"my holiday")
    lake = Lake(tmp_path / "mine")
    assert not lake.marked()
    with pytest.raises(LakeError, match="not cleared"):
        lake.begin(SPEC)
    assert photo.read_bytes() == b"my holiday"

    new = Lake(tmp_path / "new")
    assert new.marked() and (tmp_path / "new" / MARK).is_file()
    for bad, words in (("", "empty path"), (str(photo), "is a file")):
        with pytest.raises(LakeError, match=words):
            Lake(bad)


def test_one_writer_per_lake(tmp_path):
    lake = Lake(tmp_path / "lake")
    with lake_lock(lake, "run-one") as run_id:
        assert json.loads((tmp_path / "lake" / LOCK).read_text())["run_id"] == run_id == "run-one"
        with pytest.raises(LakeLocked, match="in use by run run-one"), lake_lock(Lake(tmp_path / "lake"), "run-two"):
            pass
    assert not (tmp_path / "lake" / LOCK).exists()
    # a lock left by a dead process of this host is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    import socket
    (tmp_path / "lake" / LOCK).write_text(json.dumps({"run_id": "killed", "host": socket.gethostname(),
                                                      "pid": int(dead.stdout)}))
    with lake_lock(lake, "run-three"):
        assert json.loads((tmp_path / "lake" / LOCK).read_text())["run_id"] == "run-three"


@pytest.mark.slow  # importing the whole pipeline (torch, diffusers) takes ~20 s on 2 CPUs
def test_a_second_pipeline_on_a_held_lake_stops_before_ray(tmp_path, capsys):
    from pipelines import full

    lake = Lake(tmp_path / "lake")
    with lake_lock(lake, "first-run"):
        rc = full.main(["--config", str(ROOT / "configs" / "demo.yaml"), f"lake={tmp_path / 'lake'}",
                        "stages=[crawl]", "tracking.enabled=false"])
    assert rc == 2
    assert "lake error: lake" in (err := capsys.readouterr().err) and "in use by run first-run" in err, err


def test_duplicates_keep_one_row_even_when_rows_repeat():
    data = {"row": [0, 0, 1, 1], "image_id": ["a", "a", "a", "a"], "status": ["ok"] * 4}
    dups = mark_duplicates(data)
    assert dups == {1: 0}
    table = images_table({**{f: [None] * 4 for f in ("alt_text", "source", "error", "http_status", "width", "height",
                                                     "format", "num_bytes", "bytes", "seconds")},
                          "url": ["u"] * 4, "fetched_at": [None] * 4, **data})
    assert apply_duplicates(table, dups).column("status").to_pylist() == ["ok", "ok", "duplicate", "duplicate"]


def test_a_lake_from_before_marks_is_adopted_a_foreign_folder_is_not(tmp_path):
    old = tmp_path / "old"
    (old / "images").mkdir(parents=True)
    (old / "images" / "_started.json").write_text("{}")
    (old / "mlflow.db").write_bytes(b"")
    assert Lake(old).marked()
    mixed = tmp_path / "mixed"
    (mixed / "images").mkdir(parents=True)
    (mixed / "images" / "_started.json").write_text("{}")
    (mixed / "thesis.pdf").write_bytes(b"%PDF")
    assert not Lake(mixed).marked()
