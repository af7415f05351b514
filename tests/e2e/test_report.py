"""Reports on a real demo run: `gradalign report` writes a self-contained page whose tables name
every config; it renders in headless Chromium without console errors (skipped without Chromium);
`compare` and `weights` give machine-readable results that join back to the run's tables."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import gradalign

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def demo_report(hf_demo_run, tmp_path_factory):
    rep = tmp_path_factory.mktemp("report") / "addition"
    r = _cli("report", str(hf_demo_run), "--out", str(rep), "--n-boot", "300")
    assert r.returncode == 0, r.stdout + r.stderr
    return rep, r.stdout


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gradalign", *args], capture_output=True, text=True, timeout=timeout)


def _configs(run):
    return [t["name"] for t in gradalign.load(run).manifest["config"]["teachers"]]


class _Page(HTMLParser):
    """Collects the text inside <table> elements, every img src and every external reference."""

    def __init__(self):
        super().__init__()
        self.depth, self.table_text, self.imgs, self.external, self.scripts = 0, [], [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.depth += 1
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            if re.match(r"^(https?:)?//", a.get(k) or ""):
                self.external.append(a[k])

    def handle_endtag(self, tag):
        if tag == "table":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth > 0:
            self.table_text.append(data)


def test_report_page_is_self_contained_and_names_every_config(hf_demo_run, demo_report):
    rep, stdout = demo_report
    page = rep / "index.html"
    assert page.exists() and (rep / "summary.md").exists()
    for fig in ("ranking", "winners", "position", "divergence", "token_types"):
        assert (rep / f"{fig}.png").read_bytes()[:4] == b"\x89PNG", fig
        assert f"({fig}.png)" in (rep / "summary.md").read_text()
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    cells = {s.strip() for s in p.table_text}
    for c in _configs(hf_demo_run):
        assert c in cells, f"config {c!r} missing from the page's tables"
    assert not p.external and p.scripts == 0, (p.external, p.scripts)
    assert len(p.imgs) == 5 and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    assert all(base64.b64decode(s.split(",", 1)[1])[:4] == b"\x89PNG" for s in p.imgs)
    text = page.read_text(encoding="utf-8")
    for section in ("Ranking", "wins on every question", "decisive", "Token heatmaps", "Divergence vs alignment", "TIP quadrants", "Rock-token"):
        assert section in text, section
    assert "wrote" in stdout and "Best:" in stdout


def _chromium(url: str, tmp: Path, *extra: str):
    args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
            "--enable-logging=stderr", "--v=0", *extra, url]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return r, console


def test_report_renders_in_headless_chromium_without_console_errors(hf_demo_run, demo_report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (Debian package `chromium`): headless console-error check skipped")
    # negative control: the detector must see a console error on a page that has one
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); notDefined();</script></body></html>")
    r, console = _chromium(bad.as_uri(), tmp_path, "--dump-dom")
    assert r.returncode == 0 and any("boom" in c for c in console), r.stderr[-2000:]

    rep, _ = demo_report
    r, console = _chromium((rep / "index.html").as_uri(), tmp_path, "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    assert console == [], console
    for c in _configs(hf_demo_run):
        assert c in r.stdout


def test_compare_csv_and_json_rank_every_config_and_loss(hf_demo_run):
    r = _cli("compare", str(hf_demo_run), "--format", "csv", "--n-boot", "200")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    t = gradalign.load(hf_demo_run)
    assert {(x["config"], x["loss"]) for x in rows} == set(zip(t.alignment.config, t.alignment.loss))
    means = [float(x["mean"]) for x in rows]
    assert means == sorted(means, reverse=True) and [int(x["rank"]) for x in rows] == list(range(1, len(rows) + 1))
    for x in rows:
        assert float(x["ci_low"]) <= float(x["mean"]) <= float(x["ci_high"])
    j = _cli("compare", str(hf_demo_run), "--format", "json", "--n-boot", "200")
    assert j.returncode == 0 and [x["config"] for x in json.loads(j.stdout)] == [x["config"] for x in rows]
    table = _cli("compare", str(hf_demo_run), "--n-boot", "200")
    assert table.returncode == 0 and all(c in table.stdout for c in _configs(hf_demo_run))


def test_weights_join_back_to_the_tokens_table(hf_demo_run, tmp_path):
    import pandas as pd

    t = gradalign.load(hf_demo_run)
    config = _configs(hf_demo_run)[0]
    out = tmp_path / "w.parquet"
    r = _cli("weights", str(hf_demo_run), "--config", config, "--rule", "zero-negative", "--rule", "keep-tip:Q1,Q3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    w = pd.read_parquet(out)
    assert list(w.columns) == ["question_id", "rollout_id", "position", "weight"]
    tok = t.tokens[t.tokens.config == config]
    assert len(w) == len(tok) and set(w.weight.unique()) <= {0.0, 1.0}
    j = tok.merge(w, on=["question_id", "rollout_id", "position"], how="left", validate="one_to_one")
    assert j.weight.notna().all()
    neg = t.alignment[(t.alignment.config == config) & (t.alignment.loss == "reverse_kl") & (t.alignment.cos < 0)]
    zero = neg.merge(w, on=["question_id", "rollout_id", "position"])
    assert (zero.weight == 0).all()


def test_bad_input_exits_2_with_one_line(hf_demo_run, tmp_path):
    cases = [("report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")),
             ("report", str(hf_demo_run), "--out", str(tmp_path / "r"), "--loss", "nope"),
             ("compare", str(hf_demo_run), "--format", "xml"),
             ("weights", str(hf_demo_run), "--config", "nope", "--rule", "zero-negative"),
             ("weights", str(hf_demo_run), "--config", _configs(hf_demo_run)[0], "--rule", "keep-tip:Q9")]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append(("compare", str(empty)))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases.append(("report", str(hf_demo_run), "--out", str(a_file / "rep")))  # --out under a file
    for args in cases:
        r = _cli(*args)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
