"""The grader of the SmolLM2 example: a `python:` grader (`python:smollm2_grader:short_answer`).

SmolLM2-135M-Instruct rarely writes `####` or `\\boxed{}`, so the built-in graders find no answer
in most of its replies. This one reads what it does write: for a numeric reference answer, the last
number in the reply; otherwise the first yes/no/true/false word. It returns (correct, answer), so
the report shows the answer it read. gradalign imports it from the current directory (run the
example from this folder) or from anywhere on `sys.path`.
"""

import re

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)


def short_answer(completion: str, row: dict):
    gold = str(row["answer"]).strip()
    if _NUMBER.fullmatch(gold):
        found = _NUMBER.findall(completion)
        answer = found[-1] if found else None
        return (answer is not None and float(answer) == float(gold)), answer
    m = _WORD.search(completion)
    answer = m.group(1) if m else None
    return (answer is not None and answer.lower() == gold.lower()), answer
