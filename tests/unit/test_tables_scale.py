"""`tables.load` for large runs: column selection, row filters, categorical strings, and the
streaming shard concatenation (one shard in memory at a time) give the same rows as a whole read."""

from __future__ import annotations

import pyarrow.parquet as pq

from gradalign.tables import COLUMNS, TABLES, concat_tables, load, write_table


def _empty(name):
    return {c: [] for c, _, _ in COLUMNS[name]}


def _tokens(n, rollout=0):
    cols = _empty("tokens")
    for i in range(n):
        vals = {"question_id": f"q{i % 3}", "rollout_id": rollout, "config": "ctx-a" if i % 2 else "ctx-b", "position": i,
                "token_id": 10 + i % 5, "token_text": "ab"[i % 2], "branched": i % 4 == 0}
        for c, t, _ in COLUMNS["tokens"]:
            cols[c].append(vals.get(c, float(i) if t.startswith("float") else 0))
    return cols


def test_load_reads_selected_columns_and_rows_with_categorical_strings(tmp_path):
    for name in TABLES:
        write_table(name, _tokens(40) if name == "tokens" else _empty(name), tmp_path / f"{name}.parquet")
    whole = load(tmp_path, allow_incomplete=True).tokens
    assert len(whole) == 40 and whole["config"].dtype == "category" and whole["token_text"].dtype == "category"
    assert sorted(set(whole["config"])) == ["ctx-a", "ctx-b"] and (whole["config"] == "ctx-a").sum() == 20
    part = load(tmp_path, allow_incomplete=True, columns={"tokens": ["position", "config", "kl_pq"]},
                filters={"tokens": [("branched", "==", True)]}).tokens
    assert list(part.columns) == ["position", "config", "kl_pq"]
    assert part["position"].tolist() == [p for p in range(40) if p % 4 == 0]
    assert part["config"].astype(str).tolist() == whole.loc[whole.branched, "config"].astype(str).tolist()


def test_concat_streams_shards_into_one_table(tmp_path):
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"s{k}.parquet")
        write_table("tokens", _tokens(7 + k, rollout=k), paths[-1])
    assert concat_tables("tokens", paths, tmp_path / "all.parquet", {"x": "1"}) == 7 + 8 + 9
    t = pq.read_table(tmp_path / "all.parquet")
    assert t.column("rollout_id").to_pylist() == [0] * 7 + [1] * 8 + [2] * 9
    assert t.schema.metadata[b"gradalign.x"] == b"1" and t.schema.metadata[b"gradalign.table"] == b"tokens"
    assert concat_tables("tokens", [], tmp_path / "none.parquet") == 0 and pq.read_table(tmp_path / "none.parquet").num_rows == 0


def test_load_by_column_matches_the_filtered_reader_and_keeps_row_counts(tmp_path):
    import pandas as pd
    import pytest

    from gradalign.errors import GradalignError

    for name in TABLES:
        write_table(name, _tokens(40) if name == "tokens" else _empty(name), tmp_path / f"{name}.parquet")
    cols = ["config", "position", "kl_pq", "branched"]
    by_column = load(tmp_path, allow_incomplete=True, columns={"tokens": cols}).tokens  # no filter: one column at a time
    whole = load(tmp_path, allow_incomplete=True, columns={"tokens": cols}, filters={"tokens": [("position", ">=", 0)]}).tokens
    pd.testing.assert_frame_equal(by_column, whole)
    assert list(by_column.columns) == cols and by_column["config"].dtype == "category"
    none = load(tmp_path, allow_incomplete=True, columns={"tokens": []}).tokens  # what `compare` reads
    assert none.shape == (40, 0)
    with pytest.raises(GradalignError, match="no column"):
        load(tmp_path, allow_incomplete=True, columns={"tokens": ["nope"]})
