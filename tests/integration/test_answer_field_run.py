"""`task.answer_field` end to end: diagnosing the bundled addition task from a copy whose reference
answer lives in `target` (and whose `answer` column holds something else) grades every rollout as
the run on the original file does."""

from __future__ import annotations

import json
import tomllib

from gradalign import diagnose
from gradalign.config import config_from_dict
from gradalign.tasks import data_dir


def _cfg(task_path, **task):
    d = tomllib.loads((data_dir() / "configs" / "demo.toml").read_text())
    del d["task"]["name"], d["task"]["split"]  # the task is the file at `task_path`
    d["task"].update(path=str(task_path), limit=1, **task)
    d["sampling"].update(rollouts_per_question=2)
    d["branching"].update(continuations=2, top_k=0, residual=False)
    d["teachers"] = d["teachers"][:1]  # self-solution: the student model, no other weights to load
    d["distill"]["losses"] = ["reverse_kl"]
    return config_from_dict(d)


def test_runs_grade_against_the_answer_field(tmp_path):
    row = json.loads((data_dir() / "tasks" / "addition" / "test.jsonl").read_text().splitlines()[0])
    renamed = {k: v for k, v in row.items() if k != "answer"} | {"target": row["answer"], "answer": "not-" + row["answer"]}
    (tmp_path / "original.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "renamed.jsonl").write_text(json.dumps(renamed) + "\n")

    original = diagnose(_cfg(tmp_path / "original.jsonl"), tmp_path / "a").tables().rollouts
    moved = diagnose(_cfg(tmp_path / "renamed.jsonl", answer_field="target"), tmp_path / "b").tables().rollouts

    assert original.correct.any(), "the check needs a correct rollout to tell the columns apart"
    assert (moved.status == "ok").all()
    assert moved.completion.tolist() == original.completion.tolist()
    assert moved.correct.tolist() == original.correct.tolist()
