"""``exitlab report DIR``: one self-contained HTML file (inline CSS, images as data URIs, no network)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ...errors import ExitlabError
from ...runs.files import atomic_write, read_json
from .tables import (
    BUDGET_COLS,
    EXTRA_CAPTIONS,
    caption,
    cell_text,
    exit_table,
    failure_table,
    has_failure,
    improvability_table,
    metric,
    overthinking_table,
    paper_table,
    regression,
)

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto;
font-size:12px}img{max-width:100%;border:1px solid #eee;margin:.5em 0}figure{margin:1em 0}
figcaption{font-size:13px;color:#555}.note{color:#555;font-size:13px}"""

# Marks the page once every figure has decoded, so a headless browser can check that all of them render.
CHECK = """window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0){ok++;}}
document.body.setAttribute('data-images',ok+'/'+im.length);});"""


def _table_html(header: list[str], body: list[list]) -> str:
    def cell(v):
        return html.escape(cell_text(v)).replace("±", "&plusmn;")

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr><td>" + html.escape(r[0]) + "</td>" + "".join(f"<td>{cell(v)}</td>" for v in r[1:]) + "</tr>"
                   for r in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _timings(summary: dict) -> str:
    t = summary["timing"]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{'' if v is None else f'{v:.0f}'}</td></tr>"
                   for k, v in t["per_run_seconds"].items())
    return (f"<p>Training wall time {t['train_seconds']:.0f} s; total with evaluation {t['total_seconds']:.0f} s.</p>"
            f"<table><tr><th>run</th><th>training seconds (this run's own phases)</th></tr>{rows}</table>")


def _environment(summary: dict) -> str:
    env = summary["environment"]
    code = env.get("code", {})
    items = {"exitlab": env["exitlab"], "torch": env["torch"], "python": env["python"], "platform": env["platform"],
             "device": summary["config"]["base"]["device"], "CUDA": env.get("cuda") or "none",
             "git commit": f"{code.get('commit')}{' (dirty tree)' if code.get('dirty') else ''}"}
    return "<table>" + "".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items.items()) + \
        "</table>"


def build_report(directory: str | Path) -> Path:
    """Write ``DIR/report.html`` from ``summary.json``, the tables' data, the plots and the config."""
    d = Path(directory)
    if not (d / "summary.json").is_file():
        raise ExitlabError(f"{d} holds no comparison results (summary.json missing); run `exitlab compare CONFIG "
                           f"--out {d}` first")
    fix = f"rerun `exitlab compare CONFIG --out {d}` to rewrite it (finished runs are reused)"
    summary = read_json(d / "summary.json", "comparison summary", fix)
    try:
        page = _page(d, summary)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise ExitlabError(f"{d / 'summary.json'} is not a comparison summary this version can read "
                           f"({type(e).__name__}: {e}); {fix}") from None
    out = d / "report.html"
    atomic_write(out, lambda p: p.write_text(page))
    return out


def _extras_html(summary: dict) -> list[str]:
    """Overthinking and hindsight improvability per regime, and calibration and failure prediction per exit (each
    absent from summaries written before it, the latter from regression ones)."""
    parts = []
    if "overthinking" in summary["rows"][0]:
        parts += ["<h2>Overthinking (SDN)</h2>", _table_html(*overthinking_table(summary)),
                  f"<p class='note'>{html.escape(EXTRA_CAPTIONS['overthinking'])}</p>",
                  "<h2>Hindsight improvability (ZTW)</h2>", _table_html(*improvability_table(summary)),
                  f"<p class='note'>{html.escape(EXTRA_CAPTIONS['improvability'])}</p>"]
    if has_failure(summary):
        parts += ["<h2>Calibration and failure prediction per exit</h2>", _table_html(*failure_table(summary)),
                  f"<p class='note'>{html.escape(EXTRA_CAPTIONS['failure'])}</p>"]
    return parts


def _page(d: Path, summary: dict) -> str:
    """The report's HTML."""
    config = (d / "compare.yaml").read_text() if (d / "compare.yaml").exists() else json.dumps(summary["config"])
    plots = [("accuracy_vs_flops", "Accuracy vs mean FLOPs per sample, one curve per regime (mean ± std over seeds)"),
             ("exit_distribution", "Where test samples exit at the chosen budget"),
             ("training_curves", "Validation accuracy per exit during training, phases separated by dashed lines")]
    figures = "".join(_img(d / "plots" / f"{n}.png", c) for n, c in plots if (d / "plots" / f"{n}.png").exists())
    analyses = sorted((d / "analysis").glob("*.png")) if (d / "analysis").is_dir() else []
    analysis_html = "".join(_img(p, f"analysis: {p.stem}") for p in analyses)
    seeds = summary["config"]["seeds"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>exitlab comparison</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>exitlab regime comparison</h1><p class='note'>{html.escape(str(d))}: {len(summary['rows'])} rows, "
        f"seeds {seeds}, {summary['samples']} test samples, policy <b>{html.escape(summary['policy'])}</b>. "
        f"All numbers are measured; {'test MSE (regression)' if regression(summary) else 'accuracy in %'}, mean "
        "&plusmn; sample std over seeds.</p>",
        "<h2>Accuracy at a fraction of the backbone's FLOPs</h2>", _table_html(*paper_table(summary)),
        f"<p class='note'>{html.escape(caption(summary))} Columns {metric(summary)}@{'/'.join(BUDGET_COLS)}%: test "
        f"{'MSE' if regression(summary) else 'accuracy'} at that "
        "mean cost, with the operating point (one threshold, or a mix of two neighbouring ones) chosen on the "
        "validation split; n/a = on some seed validation cannot spend that little. AUC = mean of that accuracy over "
        "budgets in [0, 100%]. train TFLOPs: measured training compute of the run, forward and backward, a shared "
        "phase 1 included. The test split's own frontier (optimistic) is in summary.json under test_frontier.</p>",
        "<h2>Per-exit accuracy</h2>", _table_html(*exit_table(summary)),
        *_extras_html(summary),
        "<h2>Plots</h2>", figures,
        *(["<h2>Analyses</h2>", analysis_html] if analysis_html else []),
        "<h2>Timings</h2>", _timings(summary),
        "<h2>Environment</h2>", _environment(summary),
        "<h2>Config</h2>", f"<pre>{html.escape(config)}</pre>",
        f"<script>{CHECK}</script></body></html>",
    ]
    return "".join(parts)
