"""The HTML page (index.html): self-contained, one section builder per part of the page.

Owns: the page's CSS, the figures inlined as data URIs, HTML tables (escaped unless told otherwise),
the run metadata line and the configs table, the tables shown only on the page (per-question means,
position, decisive nodes, quadrant details, thresholds, rock candidates) and the explanatory notes.
`render_page` joins the sections in order: head, warnings (`analysis.run_caveats`), take-aways, 1 ranking, 2 winners, 3 position,
4 token heatmaps, 5 divergence, 6 token types (TIP quadrants, then rock tokens), configs, footer.
No JavaScript, no network, no CDN: hover details are `title` attributes.

Does not own: the numbers (`data`), their formatting and the rows shared with summary.md (`rows`),
the PNGs (`figures`, only read here), the token view (`heatmap`), or writing the file (`write`).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

from gradalign import analysis as A
from gradalign.report.data import ReportContext
from gradalign.report.heatmap import token_heatmap_html
from gradalign.report.rows import (
    RANK_HEADER,
    SPACES_HEADER,
    correlation_header,
    correlation_rows,
    counts_line,
    disagreement_header,
    disagreement_rows,
    fmt_ci,
    fmt_num,
    fmt_pct,
    quadrant_header,
    quadrant_pivot_rows,
    ranking_rows,
    rock_summary_rows,
    shares_table,
    spaces_rows,
    spaces_sentence,
    teacher_disagreement_header,
    teacher_disagreement_rows,
)

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;padding:18px 24px;color:#222;line-height:1.4}
h1{font-size:22px;margin:4px 0} h2{font-size:17px;margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:3px}
.meta{color:#555;font-size:13px} .meta code{background:#f3f3f3;padding:0 3px}
ul.head li{margin:3px 0} img{max-width:100%;border:1px solid #eee}
table.tbl{border-collapse:collapse;font-size:12px;margin:8px 0} .tbl th,.tbl td{border:1px solid #ddd;padding:3px 7px;text-align:right}
.tbl th{background:#f5f5f5} .tbl td:first-child,.tbl td:nth-child(2){text-align:left}
.note{color:#666;font-size:12px} details{margin:6px 0} summary{cursor:pointer;color:#336}
.rollout{border:1px solid #ddd;border-radius:4px;padding:6px 10px;margin:10px 0}
.rhead{font-size:13px;margin-bottom:3px} .correct{color:#1a7f37;font-weight:bold} .incorrect{color:#c62828;font-weight:bold}
.prompt{font-family:monospace;font-size:12px;color:#777;white-space:pre-wrap}
.cfgline{display:flex;gap:8px;align-items:flex-start;margin:2px 0}
.cfg{min-width:120px;font-size:12px;color:#333;font-weight:bold}
.toks{font-family:monospace;font-size:13px;white-space:pre-wrap;color:#999;line-height:1.6}
.t.br{color:#000;border-radius:2px;padding:0 1px} .t.rock{font-weight:bold} .t.q3{text-decoration:underline}
.legend{font-size:12px;display:flex;flex-wrap:wrap;align-items:center;gap:6px;margin:6px 0}
.legend .bar{display:inline-block;width:160px;height:12px;border:1px solid #aaa}
.win{font-weight:bold;background:#fff3c4}
.warn{background:#fff4e5;border:1px solid #f0b429;border-radius:4px;padding:6px 12px;margin:10px 0;font-size:13px}
.warn ul{margin:4px 0;padding-left:20px}
"""


def render_page(ctx: ReportContext) -> str:
    """The whole index.html, sections in page order."""
    return "\n".join(part for section in SECTIONS for part in section(ctx))


# ----------------------------------------------------------------------------- building blocks


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "tbl", raw: bool = False) -> str:
    esc = (lambda s: s) if raw else html.escape
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>{body}</details>"


def _runs(tables) -> list[tuple[str, dict]]:
    """(run name, manifest) of each run behind the tables (several when runs were combined)."""
    mans = tables.manifest.get("runs") or [tables.manifest]
    names = tables.manifest.get("run_names") or [str(((m.get("config") or {}).get("run") or {}).get("name", "run")) for m in mans]
    return list(zip(names, mans))


def _run_line(name: str, m: dict) -> str:
    cfg = m.get("config") or {}
    st = (cfg.get("student") or {}).get("model", "?")
    br = cfg.get("branching") or {}
    return (f"run <code>{html.escape(str(name))}</code>: student <code>{html.escape(str(st))}</code>, "
            f"selector {html.escape(str(br.get('selector', '?')))}, {br.get('continuations', '?')} continuations per candidate, "
            f"created {html.escape(str(m.get('created', '?')))}, gradalign {html.escape(str(m.get('gradalign_version', '?')))}")


# ----------------------------------------------------------------------------- sections


def _head(ctx: ReportContext) -> list[str]:
    """Doctype, title, and the meta paragraph: data size, configs, losses, metric, runs."""
    t, m, title = ctx.tables, ctx.options.metric, html.escape(ctx.title)
    run_lines = [_run_line(name, man) for name, man in _runs(t)]
    return [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head><body>",
            f"<h1>{title}</h1>",
            f"<p class='meta'>{counts_line(t)}, configs: {', '.join(html.escape(c) for c in ctx.configs)}; losses: "
            f"{', '.join(sorted(set(t.alignment['loss'])))}. Alignment metric <code>{m}</code> = cosine between the ideal "
            f"gradient (what raises the student's success) and each config's distillation gradient; one-loss views use "
            f"<code>{ctx.data.loss}</code>.<br>{'<br>'.join(run_lines)}</p>"]


def _warnings(ctx: ReportContext) -> list[str]:
    """The run's caveats (`analysis.run_caveats`), above everything they qualify; nothing when none apply."""
    if not ctx.caveats:
        return []
    return ["<div class='warn'><b>Warnings</b><ul>" + "".join(f"<li>{html.escape(c.message)}</li>" for c in ctx.caveats)
            + "</ul></div>"]


def _takeaways(ctx: ReportContext) -> list[str]:
    return ["<h2>Take-aways</h2><ul class='head'>" + "".join(f"<li>{html.escape(h)}</li>" for h in ctx.headlines) + "</ul>"]


def _ranking(ctx: ReportContext) -> list[str]:
    """1. Forest plot and ranking table, with how many rows have an undefined metric and why."""
    a, o, m = ctx.tables.alignment, ctx.options, ctx.options.metric
    undefined = a[a[m].isna()]
    why = ", ".join(f"{k or '?'} ({v})" for k, v in undefined["reason"].value_counts().head(3).items()) if len(undefined) else ""
    return ["<h2>1. Ranking: configs x losses</h2>",
            f"<p class='note'>Mean {m} over branched nodes; {int(o.ci * 100)}% percentile intervals from {o.n_boot} bootstrap "
            f"replicates that resample questions (not tokens), seed {o.seed}. Split by the rollout's verdict. "
            f"{len(undefined)} of {len(a)} node x config x loss rows have an undefined {m} and are left out"
            f"{' (reasons: ' + html.escape(why) + ')' if why else ''}.</p>",
            _img(ctx.figures["ranking"]) + _html_table(RANK_HEADER, ranking_rows(ctx.data.ranking)), *_differ(ctx)]


def _differ(ctx: ReportContext) -> list[str]:
    """Where the best config and the one it ties with differ (see `headlines.tie_lines`): branched nodes
    with the largest alignment gap, and tokens where the two teachers' q(token) differ most."""
    tie = ctx.data.extras.get("tie")
    dis, tdis = ctx.data.extras.get("disagreements"), ctx.data.extras.get("teacher_disagreements")
    if tie is None or not ((dis is not None and len(dis)) or (tdis is not None and len(tdis))):
        return []
    a, b, m = html.escape(tie.a[0]), html.escape(tie.b[0]), ctx.options.metric
    out = [f"<h3>Where {a} and {b} differ</h3>",
           f"<p class='note'>{a} − {b} = {fmt_ci(tie.diff, tie.low, tie.high)} on average over {tie.n_questions} questions "
           f"({html.escape(ctx.data.loss)}; paired interval, questions resampled for both), so neither is ahead on average.</p>"]
    if dis is not None and len(dis):
        out += [f"<p class='note'>Branched nodes where their {m} differs by more than 0.25 (largest first, at most 20 of "
                f"{len(dis)}), with the completion text before the token and each teacher's probability of it:</p>",
                _html_table(disagreement_header(tie, m), disagreement_rows(dis))]
    if tdis is not None and len(tdis):
        out += ["<p class='note'>Every token, branched or not: where the two teachers' probabilities of the token the "
                "student took differ most (|log ratio| > 2, largest first). A teacher wrong only at such tokens looks as "
                "good as the other on average over branched nodes unless the nodes land there.</p>",
                _html_table(teacher_disagreement_header(tie), teacher_disagreement_rows(tdis))]
    return out


def _winners(ctx: ReportContext) -> list[str]:
    """2. Whether one config wins everywhere, shares of questions won, per-question means."""
    d, m, max_rows = ctx.data, ctx.options.metric, ctx.options.max_question_rows
    sw = A.single_winner(d.shares, d.loss)
    w = d.winners[d.winners["loss"] == d.loss].sort_values("question_id")
    more = f" (first {max_rows} of {len(w)})" if len(w) > max_rows else ""
    return ["<h2>2. Which config wins on each question</h2>",
            f"<p><b>{html.escape(sw + ' wins on every question' if sw else 'No single config wins on every question')}</b> "
            f"({html.escape(d.loss)}). Winner = highest mean {m} over the question's nodes; ties go to the name that sorts first.</p>",
            _img(ctx.figures["winners"]),
            "<p class='note'>Share of questions won (count), per loss:</p>" + _html_table(*shares_table(d.shares, ctx.configs)),
            _details(f"Per-question means ({html.escape(d.loss)}){more}", _winner_table(w, ctx.configs, max_rows))]


def _winner_table(w, configs: list[str], max_rows: int) -> str:
    """Per-question mean per config (the winner's cell highlighted), winner and margin; first `max_rows` questions."""
    rows = []
    for x in w.head(max_rows).itertuples(index=False):
        d = x._asdict()
        cells = [html.escape(str(x.question_id))]
        for c in configs:
            v = fmt_num(d.get(c)) if c in w.columns else "–"
            cells.append(f'<span class="win">{v}</span>' if c == x.winner else v)
        cells += [html.escape(str(x.winner)), fmt_num(x.margin, ".3f")]
        rows.append(cells)
    return _html_table(["question", *configs, "winner", "margin"], rows, raw=True)


def _position(ctx: ReportContext) -> list[str]:
    """3. Alignment along the rollout and at decisive nodes (figure, tables folded)."""
    o, loss = ctx.options, ctx.data.loss
    pos = ctx.data.position[ctx.data.position["loss"] == loss]
    pos_rows = [[x.config, f"{x.bin_start:.1f}–{x.bin_end:.1f}", fmt_ci(x.mean, x.ci_low, x.ci_high), str(x.n)] for x in pos.itertuples()]
    dec = ctx.data.decisive[ctx.data.decisive["loss"] == loss]
    dec_rows = [[x.config, "decisive" if x.decisive else "other", fmt_ci(x.mean, x.ci_low, x.ci_high), str(x.n), fmt_num(x.mean_abs_delta_v, ".3f")]
                for x in dec.itertuples()]
    return ["<h2>3. Along the rollout and at decisive nodes</h2>",
            f"<p class='note'>Relative position = position / completion length, {o.position_bins} equal bins. ΔV = S(sampled token) − V "
            f"at the node (how much the token the student took changed its estimated success); decisive nodes are the top "
            f"{o.decisive_top} per rollout by |ΔV| (ΔV = 0 is never decisive).</p>",
            _img(ctx.figures["position"]),
            _details("Tables", _html_table(['config', 'relative position', 'mean [CI]', 'nodes'], pos_rows)
                     + _html_table(['config', 'nodes', 'mean [CI]', 'n', 'mean |ΔV|'], dec_rows))]


def _heatmaps(ctx: ReportContext) -> list[str]:
    """4. The coloured token view of a few rollouts."""
    o = ctx.options
    return ["<h2>4. Token heatmaps</h2>",
            f"<p class='note'>{o.heatmap_rollouts} rollouts (most branched nodes, incorrect and correct alternating); one line per config. "
            f"Branched tokens are coloured by {o.metric} ({html.escape(ctx.data.loss)}).</p>",
            token_heatmap_html(ctx.tables, ctx.data, o)]


def _divergence(ctx: ReportContext) -> list[str]:
    """5. Divergence vs alignment: scatter, rho for the report's loss, every loss folded."""
    cor_rows = correlation_rows(ctx.data.correlations)
    cor_main = [row for row in cor_rows if row[1] == ctx.data.loss]
    return ["<h2>5. Divergence vs alignment</h2>",
            "<p class='note'>Spearman ρ between each token-level divergence of the teacher from the student and alignment at branched "
            "nodes, per config. KL axes use a symlog scale.</p>",
            _img(ctx.figures["divergence"]),
            _html_table(correlation_header(), cor_main),
            _details("Every loss", _html_table(correlation_header(), cor_rows))]


def _quadrants(ctx: ReportContext) -> list[str]:
    """6. Token types, first half: TIP quadrants (figure, pivot, details and thresholds folded)."""
    o, m = ctx.options, ctx.options.metric
    q = ctx.data.quadrants[ctx.data.quadrants["loss"] == ctx.data.loss]
    q_rows = [[x.config, f"{x.quadrant} {A.QUADRANT_NAMES[x.quadrant]}", fmt_pct(x.share_tokens), str(x.n_tokens), fmt_num(x.mean_entropy, ".3f"),
               fmt_num(x.mean_divergence, ".3f"), str(x.n_nodes), fmt_num(x.mean_alignment)] for x in q.itertuples()]
    th_rows = [[x.config, x.measure, f"{x.h_quantile:g}", fmt_num(x.entropy_threshold, ".4f"), f"{x.d_quantile:g}", fmt_num(x.divergence_threshold, ".4f")]
               for x in ctx.data.thresholds.itertuples()]
    return ["<h2>6. Token types</h2>",
            f"<p class='note'>TIP quadrants (arXiv 2604.14084): student entropy H x teacher-student divergence D = "
            f"<code>{html.escape(o.divergence)}</code>{' (1 − cosine)' if o.divergence == 'dist_cos' else ''}, thresholds at the "
            f"{o.h_quantile:g} / {o.d_quantile:g} quantiles within each config, “high” = strictly above. Q1 high H / high D, Q2 high H / low D, "
            f"Q3 low H / high D (overconfident and wrong), Q4 low H / low D. Share of tokens counts every rollout token; mean alignment "
            f"only branched ones.</p>",
            _img(ctx.figures["token_types"]),
            _html_table(quadrant_header(), quadrant_pivot_rows(q, m)),
            _details("Quadrant details",
                     _html_table(['config', 'quadrant', 'share of tokens', 'tokens', 'mean H', 'mean D', 'branched nodes', f'mean {m}'], q_rows)),
            _details("Thresholds", _html_table(['config', 'D', 'H quantile', 'H threshold', 'D quantile', 'D threshold'], th_rows))]


def _rocks(ctx: ReportContext) -> list[str]:
    """6. Token types, second half: rock-token candidates (how they are chosen, what they account for, the list)."""
    d, m = ctx.data, ctx.options.metric
    rock_rows = [[x.config, str(x.rank), repr(str(x.token_text)), str(x.token_id), str(x.freq), fmt_num(x.mean_loss, "+.3f"), fmt_num(x.score, "+.2f")]
                 for x in d.rocks.itertuples()]
    return [_rock_note(ctx),
            _html_table(["config", "rock types", "share of tokens", "share of summed KL(p||q)", "share of OPD norm (est., all tokens)",
                         "share of norm_distill (branched)", f"mean {m} at rock nodes", f"mean {m} elsewhere"], rock_summary_rows(d.rock_summary)),
            _details("Rock-token candidates per config", _html_table(['config', 'rank', 'token', 'id', 'freq', 'mean l_t', 'score'], rock_rows))]


def _rock_note(ctx: ReportContext) -> str:
    """How rock-token candidates are chosen and how the gradient-norm shares are measured."""
    o, d = ctx.options, ctx.data
    nc = d.norm_check
    norm_note = ("; ".join(f"{x.config}: median {x.median_ratio:.2f} (range {x.min_ratio:.2f}–{x.max_ratio:.2f}, n={x.n})" for x in nc.itertuples())
                 if len(nc) else "no sampled_token loss in this run")
    rock_loss = d.rock_summary['loss'].iloc[0] if len(d.rock_summary) else o.rock_loss
    return (f"<p class='note'>Rock-token candidates (arXiv 2605.09253): per config, token types ranked by mean l_t x frequency with "
            f"l_t = log p(y_t) − log q(y_t); the {o.rock_drop_top} most frequent types are dropped, then types seen fewer than "
            f"{o.rock_min_freq} times and types with mean l_t ≤ 0; top {o.rock_top_n} kept (fewer when fewer qualify). The paper's before/after-training filter needs a trained checkpoint and is "
            f"not applied. “OPD norm (all, est.)” sums |l_t|·‖onehot(y) − p‖ over all tokens, estimated from p(y) and H(p) "
            f"(a lower bound within a factor √2; estimate / exact at branched nodes: {html.escape(norm_note)}); “norm_distill (branched)” "
            f"sums the exact ‖d‖ of the {html.escape(rock_loss)} loss at branched nodes only.</p>")


def _spaces(ctx: ReportContext) -> list[str]:
    """7. Logit vs parameter space (runs with alignment.space = ["logit", "params"] only)."""
    comp = ctx.data.extras.get("spaces")
    if comp is None:
        return []
    scopes = sorted({str(((m.get("models") or {}).get("student") or {}).get("param_scope", {}).get("spec", "?"))
                     for _, m in _runs(ctx.tables)})
    methods = sorted({str(((m.get("models") or {}).get("student") or {}).get("param_scope", {}).get("method", "?"))
                      for _, m in _runs(ctx.tables)})
    return ["<h2>7. Logit space vs parameter space</h2>",
            f"<p><b>{html.escape(spaces_sentence(comp, ctx.data.loss))}</b></p>",
            f"<p class='note'>cos_params = cosine of the parameter gradients J<sup>T</sup>g* and J<sup>T</sup>d (J = Jacobian of the "
            f"node's logits over the parameters of scope <code>{html.escape(', '.join(scopes))}</code>, method "
            f"{html.escape(', '.join(methods))}): what an optimiser step sees, where the logit cosine sees only the LM head. "
            f"Means over nodes where both cosines are defined; {int(ctx.options.ci * 100)}% intervals resample questions; rank 1 = best "
            f"within the loss.</p>",
            _img(ctx.figures["spaces"]),
            _html_table(SPACES_HEADER, spaces_rows(comp[comp["loss"] == ctx.data.loss])),
            _details("Every loss", _html_table(SPACES_HEADER, spaces_rows(comp)))]


def _configs(ctx: ReportContext) -> list[str]:
    """The teachers (configs) of every run: name, run, model, context template."""
    teachers = [[str(t.get("name")), str(name), str(t.get("model")), repr(t.get("context", ""))]
                for name, m in _runs(ctx.tables) for t in (m.get("config") or {}).get("teachers") or []]
    return ["<h2>Configs</h2>" + _html_table(["config", "run", "model", "context template"], teachers)]


def _footer(ctx: ReportContext) -> list[str]:
    return ["<p class='note'>Generated by <code>gradalign report</code>; numbers from <code>gradalign.analysis</code> "
            "(the same functions a notebook calls). Figures are also saved as PNG beside this page; summary.md has the key tables.</p>",
            "</body></html>"]


SECTIONS = (_head, _warnings, _takeaways, _ranking, _winners, _position, _heatmaps, _divergence, _quadrants, _rocks, _spaces,
            _configs, _footer)
