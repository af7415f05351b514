"""Write candidates.jsonl: the questions screened for the SmolLM2 example (reasoning-gym, offline).

`syllogism` ("Consider these statements: 1. All dogs are doctors 2. Some doctors are insects. Does
it logically follow that: All dogs are insects? (Answer Yes or No)"), generated from a fixed seed.
Each row carries the reference `answer` and a `wrong_answer` (the other of Yes/No) for the misled
self-distillation teacher. Run from this folder: `python make_task.py`.
"""

import json

import reasoning_gym as rg

N, SEED = 24, 7
ds = rg.create_dataset("syllogism", size=N, seed=SEED)
with open("candidates.jsonl", "w", encoding="utf-8") as fh:
    for i, e in enumerate(ds):
        answer = str(e["answer"])
        row = {"id": f"syllogism-{i:02d}", "question": e["question"], "answer": answer,
               "wrong_answer": {"Yes": "No", "No": "Yes"}[answer]}
        fh.write(json.dumps(row) + "\n")
print(f"wrote {N} rows to candidates.jsonl")
