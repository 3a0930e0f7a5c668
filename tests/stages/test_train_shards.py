"""Each training worker reads only its share of `pairs` (stages/train_shards.py, pipelines/train.py
TrainShares): shares are disjoint, their union is every eligible row, and the bytes each worker reads
(counted at the file handles) are its share, not the whole table as when every worker read it all."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.support.read_counter import ReadCounter
from stages.train_shards import Group, Piece, plan_shares, read_share
from tests.support.train_helpers import make_pairs, sample_photos


def test_plan_is_contiguous_balanced_and_covers_every_row_once():
    groups = [Group("a", 0, (0, 1, 2)), Group("a", 1, ()), Group("b", 0, (1, 3, 4)), Group("c", 0, (0,))]
    flat = [(g.path, g.row_group, o) for g in groups for o in g.eligible]
    for world in (1, 2, 3, 7):
        shares = plan_shares(groups, world)
        got = [[(p.path, p.row_group, o) for p in s for a, b in p.ranges for o in range(a, b)] for s in shares]
        assert sum(got, []) == flat  # in order, each row once
        assert max(map(len, got)) - min(map(len, got)) <= 1, (world, got)
        assert all(p.row_group != 1 or p.path != "a" for s in shares for p in s)  # a group without rows is never read
    assert plan_shares(groups, 2)[1] == [Piece("b", 0, ((1, 2), (3, 5))), Piece("c", 0, ((0, 1),))]  # ranges merge
    wrapped = plan_shares([Group("a", 0, (2,)), Group("b", 0, (0,))], 3)  # fewer rows than workers
    assert [s[0].path for s in wrapped] == ["a", "b", "a"]
    with pytest.raises(ValueError, match="no eligible training rows"):
        plan_shares([Group("a", 0, ())], 2)
    with pytest.raises(ValueError, match="world_size = 0"):
        plan_shares(groups, 0)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """12 real pairs (4 photos x 3 variants) in 6 parts of 2 rows; one row failed."""
    from catalog.lake import Lake

    rows = make_pairs(sample_photos()[:4], gt_size=64, variants=3)
    rows = rows.sort_by("pair_id")
    status = rows.column("status").to_pylist()
    status[5] = "error"
    rows = rows.set_column(rows.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    lake = Lake(str(tmp_path_factory.mktemp("shards") / "lake"))
    for i in range(0, rows.num_rows, 2):
        lake.write_part("pairs/degraded", rows.slice(i, 2), name=f"part-{i // 2:03d}")
    return lake


def _eligible(lake, image_ids=None) -> set[str]:
    t = lake.read("pairs", columns=["pair_id", "image_id", "status"])
    keep = pc.equal(t.column("status"), "ok")
    if image_ids is not None:
        keep = pc.and_(keep, pc.is_in(t.column("image_id"), value_set=pa.array(image_ids)))
    return set(t.filter(keep).column("pair_id").to_pylist())


@pytest.mark.parametrize("held_out", [False, True])
def test_two_workers_read_disjoint_shares_that_cover_the_table(lake, held_out):
    from pipelines.train import PAIR_COLUMNS, train_shares

    images = sorted(set(lake.read("pairs", columns=["image_id"]).column("image_id").to_pylist()))
    allow = images[1:] if held_out else None
    data = train_shares(lake, 2, allow)
    want = _eligible(lake, allow)
    # the old reader: every worker read every part (all columns it trains on), then kept its hash share
    old = ReadCounter()
    for f in lake.files("pairs"):
        pq.read_table(f, columns=PAIR_COLUMNS, filesystem=old.filesystem())
    per_rank = []
    for rank in range(2):
        counter = ReadCounter()
        rows, stats = dataclasses.replace(data, fs=counter.filesystem()).rows(rank, 2)
        per_rank.append(({r["pair_id"] for r in rows}, set(counter.opened), counter.total(), stats))
        assert [r["pair_id"] for r in rows] == sorted(r["pair_id"] for r in rows)
        assert all(isinstance(r["caption"], str) for r in rows) and "status" not in rows[0]
        assert stats.rows == len(rows) and stats.files == len(counter.opened)
        assert 0 < stats.bytes <= counter.total()  # the column chunks, and the footers besides
    (ids0, files0, bytes0, _), (ids1, files1, bytes1, _) = per_rank
    assert not ids0 & ids1 and ids0 | ids1 == want
    assert abs(len(ids0) - len(ids1)) <= 1
    # each part is opened by one rank, except at most the one part a cut falls in
    assert len(files0 & files1) <= (0 if not held_out else 1)
    assert files0 | files1 <= set(lake.files("pairs"))
    print(f"held_out={held_out}: old reader {old.total()} B per worker; new {bytes0} B + {bytes1} B "
          f"({len(files0)} + {len(files1)} of {len(lake.files('pairs'))} parts)")
    assert bytes0 + bytes1 <= old.total() and max(bytes0, bytes1) < 0.7 * old.total()


def test_a_share_plan_refuses_another_world_size(lake):
    from pipelines.train import train_shares

    with pytest.raises(ValueError, match="plan is for 2 workers, this worker group has 3"):
        train_shares(lake, 2).rows(0, 3)


def test_no_eligible_rows_is_a_config_error_naming_the_split(lake):
    from catalog.config import ConfigError
    from pipelines.train import train_shares

    with pytest.raises(ConfigError, match="no eligible training rows.*split.heldout_fraction"):
        train_shares(lake, 2, ["not-an-image"])


def test_read_share_reads_only_the_named_row_groups(lake):
    files = lake.files("pairs")
    counter = ReadCounter()
    table, stats = read_share(counter.filesystem(), [Piece(files[2], 0, ((1, 2),))], ["pair_id", "hq"])
    assert set(counter.opened) == {files[2]} and table.num_rows == 1 == stats.rows
    assert table.column("pair_id").to_pylist() == pq.read_table(files[2]).column("pair_id").to_pylist()[1:2]
