"""Grader functions used by the grader tests (tests/unit/test_graders.py and others) via ``python:tests.grader_fixtures:<fn>``.

Owns only test-support graders; imported inside grader worker processes, so it
must stay importable from the repository root and free of heavy imports.
"""

import time


def says_yes(completion: str, row: dict) -> bool:
    """Correct when the completion contains "yes"."""
    return "yes" in completion


def always_raises(completion: str, row: dict) -> bool:
    """Fails like a buggy user grader."""
    return 1 / 0


def sleeps_forever(completion: str, row: dict) -> bool:
    """Hangs like a pathological grader (only a timeout can stop it)."""
    time.sleep(30)
    return True


def hangs_on_hang(completion: str, row: dict) -> bool:
    """Hangs when the completion contains "hang"; otherwise behaves like ``says_yes``."""
    if "hang" in completion:
        time.sleep(30)
    return "yes" in completion


NOT_CALLABLE = 42


def contains_ab(text, row):
    """Exact-enumeration tests: success iff the completion contains "ab"."""
    return "ab" in text


def odd_a(text, row):
    """Exact-enumeration tests: success iff the completion has an odd number of "a" characters."""
    return text.count("a") % 2 == 1


def flaky(text, row):
    """Fault tests: raises on completions of length divisible by 3, else odd_a."""
    if len(text) % 3 == 0:
        raise ValueError("grader bug")
    return text.count("a") % 2 == 1


def last_number_equals(text, row):
    """Real-model test: the last integer in the completion equals the row's answer."""
    import re

    nums = re.findall(r"-?\d+", text)
    return bool(nums) and nums[-1] == str(row["answer"]).strip()


def raises_on_boom(text, row):
    """Breaker tests: raises when the completion contains "boom", else says_yes."""
    if "boom" in text:
        raise ValueError("boom")
    return "yes" in text


def raises_on_q2(text, row):
    """Grader-fault tests: raises on every completion of row q2 (all its continuations fail
    grading), else odd_a."""
    if row["id"] == "q2":
        raise ValueError("grader bug on q2")
    return text.count("a") % 2 == 1


def returns_row_value(text, row):
    """Result-type tests: returns the row's "value" whatever it is."""
    return row["value"]


class _NotAnException(BaseException):
    pass


def raises_base_exception(text, row):
    """Raises a BaseException that is not an Exception (user code can)."""
    raise _NotAnException("not an Exception")


def calls_sys_exit(text, row):
    """Calls sys.exit while grading, like a script turned into a grader."""
    import sys

    sys.exit(3)


def last_number_with_answer(text, row):
    """Returns (verdict, the answer it read): the extracted answer reaches the rollouts table."""
    import re

    nums = re.findall(r"-?\d+", text)
    answer = nums[-1] if nums else None
    return answer == str(row["answer"]).strip(), answer
