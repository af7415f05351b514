"""Candidate next tokens at a node: which tokens get their own success estimate S_k.

Owns: building the candidate set K at one node from the sampled token, the student's top-k, each
teacher config's top-k, and an optional coverage extension (student tokens by descending
probability until a target mass is covered), with a cap and a recorded source per candidate; and
`slots_per_node`, the estimation slots a node usually takes (refine's budget reserve before candidates exist).
Does not own the residual bucket's sampling (`pipeline.branching` draws it) or the estimates (`estimates`).

Priority when the cap bites: sampled token, then student top-k, then teachers' top-k in config
order, then coverage tokens. A token proposed by several sources keeps the first source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

SOURCES = ("sampled", "student_topk", "teacher_topk", "coverage", "residual")


@dataclass(frozen=True)
class Candidate:
    token_id: int
    source: str  # one of SOURCES
    source_config: str = ""  # the teacher config that proposed it (teacher_topk only)


def candidate_set(
    sampled: int,
    student_logp: torch.Tensor,
    teacher_logps: Mapping[str, torch.Tensor],
    *,
    top_k: int = 3,
    coverage: float = 0.0,
    max_candidates: int = 16,
) -> tuple[Candidate, ...]:
    """Candidates at one node. student_logp: [V]; teacher_logps: config name -> [V]."""
    out: list[Candidate] = []
    seen: set[int] = set()

    def add(tok: int, source: str, cfg: str = "") -> None:
        if tok not in seen and len(out) < max_candidates:
            seen.add(tok)
            out.append(Candidate(int(tok), source, cfg))

    add(sampled, "sampled")
    if top_k:
        for t in torch.topk(student_logp, min(top_k, student_logp.numel())).indices.tolist():
            add(t, "student_topk")
        for name, lq in teacher_logps.items():
            for t in torch.topk(lq, min(top_k, lq.numel())).indices.tolist():
                add(t, "teacher_topk", name)
    if coverage > 0:
        p = student_logp.exp()
        order = torch.argsort(p, descending=True).tolist()
        for t in order:
            if float(p[list(seen)].sum()) >= coverage or len(out) >= max_candidates:
                break
            add(t, "coverage")
    return tuple(out)


def slots_per_node(branching, n_configs: int) -> int:
    """Estimation slots a node is budgeted for: the candidate set's usual size (the sampled token,
    the student's and each of `n_configs` configs' top-k, capped at `max_candidates`) plus the
    residual bucket, an upper bound without coverage. `branching` is the config's `BranchingConfig`.
    Refine reserves this times M per final node while it queries values; every budget is finally
    charged with a node's actual candidates (`pipeline.selection.fit_branches`)."""
    b = branching
    return min(b.max_candidates, 1 + b.top_k * (1 + n_configs)) + int(b.residual)
