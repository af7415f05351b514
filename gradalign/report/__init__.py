"""Reports: one self-contained HTML page per task, PNG figures and a Markdown summary beside it.

Owns: turning the numbers of `gradalign.analysis` into files a person can look at. Reads runs only
through `gradalign.load`. The modules, in the order a report is made:

- `options`   ReportOptions (every choice, each a CLI flag) and ReportFiles (what one report wrote).
- `data`      ReportData: every analysis table a report shows, gathered once (`report_data`);
              `task_name`; ReportContext, what the renderers read.
- `rows`      numbers as text (NaN prints "–") and the table rows shared by the page and summary.md.
- `figures`   every matplotlib figure (Agg backend, no display), written as PNG.
- `headlines` the take-away sentences (page, summary.md and the CLI).
- `heatmap`   the coloured token view of a few rollouts (an HTML fragment, hover via `title`).
- `page`      index.html: CSS, figures inlined as data URIs, one builder per page section;
              no JavaScript, no network, no CDN.
- `markdown`  summary.md: key tables and take-aways, linking the PNGs.
- `write`     build_report (one task into one folder) and write_reports (group runs by task).

Does not own: any statistic (every number comes from `gradalign.analysis`), terminal output (the
CLI renders with rich), or the run tables themselves.
"""

from gradalign.report.data import ReportContext, ReportData, report_data, task_name
from gradalign.report.figures import fig_divergence, fig_position, fig_ranking, fig_token_types, fig_winners
from gradalign.report.headlines import headlines
from gradalign.report.heatmap import pick_rollouts, token_heatmap_html
from gradalign.report.options import ReportFiles, ReportOptions
from gradalign.report.page import CSS
from gradalign.report.rows import MEASURE_LABELS, RANK_HEADER
from gradalign.report.write import build_report, write_reports

__all__ = [
    "CSS", "MEASURE_LABELS", "RANK_HEADER", "ReportContext", "ReportData", "ReportFiles", "ReportOptions", "build_report",
    "fig_divergence", "fig_position", "fig_ranking", "fig_token_types", "fig_winners", "headlines", "pick_rollouts",
    "report_data", "task_name", "token_heatmap_html", "write_reports",
]
