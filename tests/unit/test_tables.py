"""The schema owner (`gradalign.tables`): typed rows are the columns, the one writer refuses rows that
do not match them (a misspelled key must not become an all-null column), and the typed manifest
round-trips and still reads like the plain dict it replaced."""

from __future__ import annotations

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from gradalign.tables import (
    COLUMNS,
    ROW_TYPES,
    SCHEMA_VERSION,
    Manifest,
    NodeRow,
    RunIncomplete,
    SchemaMismatch,
    WeightRow,
    read_manifest,
    write_json,
    write_table,
)


def _weights(**overrides):
    cols = {"question_id": ["q0", "q1"], "rollout_id": [0, 1], "position": [3, 4], "weight": [1.0, 0.0]}
    return {**cols, **overrides}


def test_columns_are_the_row_records_fields():
    for name, rt in ROW_TYPES.items():
        assert [c for c, _, _ in COLUMNS[name]] == [f.name for f in dataclasses.fields(rt)]


@pytest.mark.parametrize("rows, needle", [
    ({k: v for k, v in _weights().items() if k != "weight"}, "missing columns ['weight']"),
    ({**_weights(), "wieght": [1.0, 0.0]}, "unknown columns ['wieght']"),
    (_weights(weight=[1.0]), "different lengths"),
    ([NodeRow(*([0] * len(dataclasses.fields(NodeRow))))], "expected WeightRow rows, got NodeRow"),
], ids=["missing", "misspelled", "ragged", "wrong record"])
def test_writer_refuses_rows_that_do_not_match_the_schema(tmp_path, rows, needle):
    path = tmp_path / "w.parquet"
    with pytest.raises(SchemaMismatch, match=needle.replace("[", r"\[").replace("]", r"\]")):
        write_table("weights", rows, path)
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left


def test_records_and_columns_write_the_same_file(tmp_path):
    cols = _weights()
    recs = [WeightRow(*vals) for vals in zip(*cols.values())]
    assert write_table("weights", cols, tmp_path / "a.parquet", {"k": "v"}) == 2
    write_table("weights", recs, tmp_path / "b.parquet", {"k": "v"})
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.equals(b) and a.schema.metadata[b"gradalign.schema_version"] == SCHEMA_VERSION.encode()
    assert a.schema.metadata[b"gradalign.k"] == b"v"


def _manifest() -> Manifest:
    return Manifest(**{f.name: f"<{f.name}>" for f in dataclasses.fields(Manifest)} | {
        "schema_version": SCHEMA_VERSION, "faults": {"grader_errors": 0}, "config": {"run": {"seed": 0}}})


def test_manifest_round_trips_and_reads_like_a_dict(tmp_path):
    m = _manifest()
    write_json(m, tmp_path / "manifest.json")
    back = read_manifest(tmp_path)
    assert back == m and back.faults == {"grader_errors": 0}
    assert back["faults"] is back.faults and back.get("nope", 1) == 1 and "config" in back
    assert dict(back) == m.to_dict() and len(back) == len(dataclasses.fields(Manifest))
    json.dumps(dict(back))  # JSON-ready through dict() / to_dict()


def test_manifest_missing_a_field_is_refused_and_unknown_keys_are_ignored(tmp_path):
    d = _manifest().to_dict()
    write_json({**d, "my_note": "x"}, tmp_path / "manifest.json")
    assert read_manifest(tmp_path) == _manifest()
    del d["faults"]
    write_json(d, tmp_path / "manifest.json")
    with pytest.raises(RunIncomplete, match="missing faults"):
        read_manifest(tmp_path)
