"""What a report is asked for and what it hands back.

Owns: `ReportOptions` (every choice behind a report; each has a CLI flag) and `ReportFiles` (the
paths and headlines one written report returns).

Does not own: computing anything (`data`), drawing (`figures`), rendering (`page`, `markdown`) or
writing files (`write`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReportOptions:
    """Choices behind a report (all have CLI flags)."""

    metric: str = "cos"              # alignment column: cos | cos_candidates
    loss: str | None = None          # loss of the one-loss views (winners, position, heatmaps, scatter, quadrants); None: reverse_kl if present
    n_boot: int = 2000               # bootstrap replicates (questions resampled)
    ci: float = 0.95
    seed: int = 0
    position_bins: int = 5
    decisive_top: int = 1            # decisive nodes per rollout (largest |delta V|)
    heatmap_rollouts: int = 4
    divergence: str = "kl_pq"        # TIP divergence axis
    h_quantile: float = 0.5
    d_quantile: float = 0.5
    rock_min_freq: int = 2
    rock_drop_top: int = 5
    rock_top_n: int = 20
    rock_loss: str = "sampled_token"  # loss whose exact norm_distill gives the branched-node gradient share
    max_question_rows: int = 60       # per-question table/heatmap rows shown (all are counted)


@dataclass(frozen=True)
class ReportFiles:
    """What one report wrote."""

    task: str
    out_dir: Path
    html: Path
    markdown: Path
    figures: tuple[Path, ...]
    headlines: tuple[str, ...]
    caveats: tuple = ()  # `analysis.Caveat` records shown at the report's top
