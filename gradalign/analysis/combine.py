"""Combining runs: several runs' tables analysed as one.

Owns: `combine_runs` (concatenate `Tables`, offsetting rollout ids and relabelling clashing config
names as `run/config`, with a `run` column on every table).

Does not own: reading runs (`gradalign.tables.load`) nor any statistic over the result (the other
analysis modules take the combined tables like any other).
"""

from __future__ import annotations

from typing import Sequence

from gradalign.analysis.schema import AnalysisError, _distinct


def combine_runs(runs: Sequence, names: Sequence[str] | None = None):
    """Concatenate several runs' Tables (e.g. one per context or teacher family) into one Tables.

    Rollout ids are offset per run so (question_id, rollout_id) stays unique; each table gets a
    `run` column. A config name used by more than one run is relabelled `run/config` so configs of
    different runs never merge. The manifest becomes {"runs": [manifest, ...]}. Tables read with a
    column selection (`load(columns=...)`, e.g. a tokens table with no columns) combine as they are.
    """
    import pandas as pd

    from gradalign.tables import Tables

    runs = list(runs)
    if not runs:
        raise AnalysisError("no runs to combine")
    if len(runs) == 1:
        return runs[0]
    names = list(names) if names is not None else [
        str((r.manifest.get("config", {}).get("run", {}) or {}).get("name") or f"run{i}") for i, r in enumerate(runs)
    ]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    seen: dict[str, int] = {}
    for r in runs:
        for c in (_distinct(r.tokens["config"]) if "config" in r.tokens.columns else set()) | _distinct(r.alignment["config"]):
            seen[c] = seen.get(c, 0) + 1
    frames: dict[str, list] = {k: [] for k in ("rollouts", "tokens", "nodes", "alignment")}
    offset = 0
    for r, name in zip(runs, names):
        for k in frames:
            df = getattr(r, k).copy()
            if "rollout_id" in df.columns:  # absent from a tokens table loaded without it (`load(columns=...)`)
                df["rollout_id"] = (df["rollout_id"].astype("int64") + offset).astype("int32")
            if "config" in df.columns:
                df["config"] = df["config"].map(lambda c, n=name: f"{n}/{c}" if seen.get(c, 0) > 1 else c)  # categories only
            if k == "nodes" and "source_config" in df.columns:
                df["source_config"] = [f"{name}/{c}" if c and seen.get(c, 0) > 1 else c for c in df["source_config"]]
            df["run"] = name
            frames[k].append(df)
        ids = pd.concat([r.rollouts["rollout_id"], r.alignment["rollout_id"]])
        offset += int(ids.max()) + 1 if len(ids) else 0
    return Tables(manifest={"runs": [r.manifest for r in runs], "run_names": names},
                  **{k: pd.concat(v, ignore_index=True) for k, v in frames.items()})
