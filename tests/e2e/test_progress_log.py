"""Non-interactive diagnose (no terminal: a subprocess): plain progress lines, cumulative over shards,
with tokens/s and ETA, and the run's warnings in the summary."""

from __future__ import annotations

import json
import re

from tests.conftest import cli

DEMO = "data/configs/demo.toml"


def test_plain_progress_lines_and_summary_warnings(tmp_path):
    out = tmp_path / "run"
    r = cli("diagnose", DEMO, "--out", str(out), "--shard-size", "1", "--progress-every", "0",
            "--set", "task.limit=2", "--set", "sampling.rollouts_per_question=2", "--set", "branching.continuations=2",
            "--set", "branching.budget_continuations=6", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("progress: ")]
    by_stage: dict[str, list[str]] = {}
    for ln in lines:
        by_stage.setdefault(ln.split()[1], []).append(ln)
    assert {"rollouts", "score", "branch", "questions"} <= set(by_stage), r.stderr
    # cumulative over the two shards: rollouts reach 4 of 4 and never restart at 1 of 2
    counts = [int(re.search(r"rollouts (\d+)/", ln).group(1)) for ln in by_stage["rollouts"]]
    assert counts == sorted(counts) and counts[-1] == 4 and "rollouts 4/4 rollouts (100%)" in by_stage["rollouts"][-1]
    assert by_stage["questions"][-1].startswith("progress: questions 2/2 questions (100%)")
    assert all("tok/s" in ln for ln in by_stage["score"] + by_stage["branch"])
    assert any("ETA" in ln for ln in lines)
    # the summary's warnings: few questions, and the budget that kept fewer nodes than asked
    assert "warning: Only 2 questions" in r.stdout
    assert "warning: The node budget kept fewer nodes than the selector asked for" in r.stdout
    # the budget priced with actual candidate counts: no rollout spends more than 6 continuations, and
    # the continuations sampled (EOS-first candidates need none) stay within what was priced
    m = json.loads((out / "manifest.json").read_text())
    assert all(s["spent_continuations"] <= 6 and s["nodes"] <= s["asked"] for s in m["selection"])
    assert any(s["nodes"] < s["asked"] for s in m["selection"])
    assert m["continuations"] <= sum(s["spent_continuations"] for s in m["selection"])
