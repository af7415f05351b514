"""The bundled verifiable task: multi-digit addition written out column by column with carries.

Owns: generating problems from a seed, writing their worked solutions (correct, or with the
systematic flaw the `teacher-flawed` model is trained on), and the row fields that teacher
contexts use (`solution`, `summary`, `example`). Does not own tokenisation, training (the other
`gradalign.world` modules) or grading (rows carry `answer`; the generic `exact` grader in
`gradalign.graders` checks the text after the last ``####``).

Solution format, for 4821+3597 (columns from the right, carry-in written as ``+1``)::

    1+7=8,2+9=11,8+5+1=14,4+3+1=8
    #### 8418

The final answer is the last digit of each column sum read right to left, plus the final carry.
The flawed variant drops the carry out of any column whose sum is exactly 10 (the next column omits
``+1``), so the flawed teacher is confidently wrong on a specific, identifiable token.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

TASK_NAME = "addition"
PROMPT_TEMPLATE = "Q {question}\n"
# Contexts the student is trained to use (self-distillation teachers) and their row fields.
CONTEXTS: dict[str, str] = {
    "none": "",
    "solution": "Reference solution: {solution}\n",
    "summary": "Summary: {summary}\n",
    "answer": "Answer: {answer}\n",
    "example": "Example: {example}\n",
}


@dataclass(frozen=True)
class Problem:
    """Two non-negative integers of `digits` digits each (leading digit non-zero)."""

    a: int
    b: int

    @property
    def question(self) -> str:
        return f"{self.a}+{self.b}"

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


@dataclass(frozen=True)
class Row:
    """One JSONL row of the task files (field names are the template fields)."""

    id: str
    question: str
    answer: str
    solution: str
    summary: str
    example: str
    digits: int
    flawed_solution: str
    flawed_answer: str


def _columns(a: int, b: int) -> tuple[list[int], list[int]]:
    da = [int(c) for c in str(a)][::-1]
    db = [int(c) for c in str(b)][::-1]
    n = max(len(da), len(db))
    da += [0] * (n - len(da))
    db += [0] * (n - len(db))
    return da, db


def solve(a: int, b: int, *, flawed: bool = False, carries_given: str | None = None) -> tuple[str, str, str]:
    """Worked solution, final answer and carry summary for a+b.

    With `flawed`, a column whose sum is exactly 10 produces no carry (the systematic error).
    With `carries_given` (one '0'/'1' per column, right to left), the carries follow that pattern
    whatever the sums are: the solution a model writes when it trusts a given carry summary.
    Returns (solution_text, answer, summary) as a plain triple for internal use only.
    """
    da, db = _columns(a, b)
    steps, digits, carries = [], [], []
    carry = 0
    for i, (x, y) in enumerate(zip(da, db)):
        s = x + y + carry
        steps.append(f"{x}+{y}" + ("+1" if carry else "") + f"={s}")
        digits.append(s % 10)
        if carries_given is not None:
            carry = int(carries_given[i])
        else:
            carry = 0 if (flawed and s == 10) else s // 10
        carries.append(str(carry))
    if carry:
        digits.append(carry)
    answer = "".join(str(d) for d in digits[::-1])
    solution = ",".join(steps) + f"\n#### {answer}"
    summary = "carries " + "".join(carries)
    return solution, answer, summary


def completion_for(solution: str) -> str:
    """The target completion after the prompt: the worked solution itself."""
    return solution


def sample_problem(rng: random.Random, digits: int) -> Problem:
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    return Problem(rng.randint(lo, hi), rng.randint(lo, hi))


def make_row(rng: random.Random, idx: int, split: str, digits: int) -> Row:
    p = sample_problem(rng, digits)
    solution, answer, summary = solve(p.a, p.b)
    assert answer == p.answer
    ex = sample_problem(rng, rng.choice((2, 3)))
    ex_solution, _, _ = solve(ex.a, ex.b)
    flawed_solution, flawed_answer, _ = solve(p.a, p.b, flawed=True)
    return Row(
        id=f"{split}-{idx:05d}",
        question=p.question,
        answer=answer,
        solution=solution,
        summary=summary,
        example=f"Q {ex.question}\n{ex_solution}",
        digits=digits,
        flawed_solution=flawed_solution,
        flawed_answer=flawed_answer,
    )


def generate_split(seed: int, split: str, n: int, digit_range: tuple[int, int] = (3, 5)) -> list[Row]:
    """`n` rows with operand lengths uniform in `digit_range` (inclusive); distinct questions."""
    rng = random.Random(f"{seed}:{split}")
    rows, seen = [], set()
    while len(rows) < n:
        row = make_row(rng, len(rows), split, rng.randint(*digit_range))
        if row.question in seen:
            continue
        seen.add(row.question)
        rows.append(row)
    return rows


def write_jsonl(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    tmp.replace(path)
