"""HTML and Markdown pages built from notebook runs: per-notebook HTML, the index, RESULTS.md."""

from __future__ import annotations

import html
import json
from pathlib import Path

from kdlib.lab.emit import format_value

TOKEN_METRICS = ("teacher_tokens", "teacher_tokens_total")


def write_html(nb, path: Path) -> None:
    """Render an executed notebook; nbconvert's lab template inlines images as data URIs."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    path.write_text(body, encoding="utf-8")


def _records(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "notebook" in rec and "status" in rec:
            out.append(rec)
    return out


def _metric_text(m: dict) -> str:
    unit = f" {m['unit']}" if m.get("unit") else ""
    return f"{m['name']} = {format_value(m['value'], m.get('std'))}{unit}"


INDEX_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.5rem;text-align:left;vertical-align:top}
.ok{color:#17703a;font-weight:600}.failed{color:#b3261e;font-weight:600}ul{margin:0;padding-left:1.1rem}
code{background:#f4f4f4;padding:0 .2rem}.err{color:#b3261e;font-size:.9em;white-space:pre-wrap}
.finding{margin:.3rem 0 0;max-width:34rem}.thumb{width:260px;border:1px solid #ddd}.rec{color:#666;font-size:.9em}
.up{color:#17703a}.down{color:#b3261e}details{margin-top:.3rem}
"""
HEADLINES = 6          # metrics shown per notebook; the rest are one click away


def write_key_figure(nb, path: Path) -> str | None:
    """Save the notebook's key figure (the first image of a cell tagged ``key-figure``, else its first image)
    as `path`; returns the file name, or None when the notebook drew nothing."""
    import base64

    images = [(("key-figure" in cell.get("metadata", {}).get("tags", [])), out["data"]["image/png"])
              for cell in nb.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    if not images:
        return None
    tagged = [img for key, img in images if key]
    data = tagged[0] if tagged else images[0][1]
    path.write_bytes(base64.b64decode(data if isinstance(data, str) else "".join(data)))
    return path.name


def _versus_record(m: dict, record: dict[str, dict]) -> str:
    """" (record x, +d)" for a metric also in the committed result of record of the same profile."""
    ref = record.get(m["name"])
    if ref is None or isinstance(m["value"], str) or isinstance(ref.get("value"), str):
        return ""
    diff = m["value"] - ref["value"]
    better = m.get("higher_is_better")
    cls = "" if better is None or abs(diff) < 1e-12 else ("up" if (diff > 0) == better else "down")
    return (f" <span class='rec'>record {html.escape(format_value(ref['value']))}, "
            f"<span class='{cls}'>{diff:+.3g}</span></span>")


def _row(rec: dict, out_dir: Path) -> str:
    stem = html.escape(rec["notebook"])
    record_path = out_dir / "results" / str(rec.get("profile", "")) / f"{rec['notebook']}.json"
    record = {}
    if record_path.is_file() and record_path.resolve() != (out_dir / f"{rec['notebook']}.json").resolve():
        try:
            record = {m["name"]: m for m in json.loads(record_path.read_text()).get("metrics", [])}
        except (json.JSONDecodeError, AttributeError):
            record = {}
    metrics = rec.get("metrics", [])
    items = [f"<li>{html.escape(_metric_text(m))}{_versus_record(m, record)}</li>" for m in metrics]
    rest = (f"<details><summary>all {len(items)} metrics</summary><ul>{''.join(items[HEADLINES:])}</ul></details>"
            if len(items) > HEADLINES else "")
    err = rec.get("error")
    err_html = (f"<div class='err'>cell {err.get('cell')}: {html.escape(str(err.get('ename')))}: "
                f"{html.escape(str(err.get('evalue'))[:500])}</div>") if err else ""
    finding = f"<p class='finding'>{html.escape(rec['finding'])}</p>" if rec.get("finding") else ""
    figure = (f"<a href='{stem}.html'><img class='thumb' src='{html.escape(rec['figure'])}' alt='key figure of {stem}'>"
              "</a>") if rec.get("figure") and (out_dir / rec["figure"]).is_file() else ""
    return (f"<tr><td><a href='{stem}.html'><b>{stem}</b></a>{finding}</td><td>{figure}</td>"
            f"<td class='{html.escape(rec['status'])}'>{html.escape(rec['status'])}<br>"
            f"<span class='rec'>{html.escape(rec.get('profile', ''))}, {rec.get('duration_s', 0):.0f} s</span></td>"
            f"<td><ul>{''.join(items[:HEADLINES])}</ul>{rest}{err_html}</td></tr>")


def write_index(out_dir: Path) -> Path:
    """reports/index.html: per notebook its finding, key figure, status, time and headline numbers beside the
    committed result of record of the same profile (with the difference); every metric one click away."""
    recs = _records(out_dir)
    head = recs[0] if recs else {}
    git = head.get("git", {})
    machine = head.get("machine", {})
    meta = (f"commit <code>{html.escape(str(git.get('commit', '?')))}</code>"
            f"{' (dirty)' if git.get('dirty') else ''} · {html.escape(str(machine.get('device', '?')))}"
            f" · {machine.get('cpu_count', '?')} cores · torch {html.escape(str(machine.get('torch', '?')))}"
            f" · started {html.escape(str(head.get('started', '?')))}")
    n_fail = sum(r["status"] != "ok" for r in recs)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>kdlib reports</title>"
            f"<style>{INDEX_CSS}</style></head><body><h1>kdlib reports</h1><p>{meta}</p>"
            f"<p>{len(recs) - n_fail} of {len(recs)} notebooks ok. Results of record: <a href='RESULTS.md'>RESULTS.md</a>."
            "</p><table><tr><th>notebook and finding</th><th>key figure</th><th>status</th>"
            "<th>headline numbers (vs the result of record)</th></tr>"
            + "".join(_row(r, out_dir) for r in recs) + "</table></body></html>")
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def results_markdown(results_dir: Path) -> str:
    """RESULTS.md: per profile, one section per notebook with its headline metrics table."""
    lines = ["# Results of record", "",
             "Generated by `python -m kdlib run --profile cpu|gpu` from the committed code; do not edit by hand.",
             "Each table holds the headline metrics a notebook emitted (mean ± std over seeds where the notebook ran several).",
             ""]
    for profile_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()) if results_dir.is_dir() else []:
        lines += [f"## Profile `{profile_dir.name}`", ""]
        for rec in _records(profile_dir):
            git, machine = rec.get("git", {}), rec.get("machine", {})
            hw = machine.get("gpu") or f"CPU, {machine.get('cpu_count', '?')} cores"
            tokens = next((m for m in rec.get("metrics", []) if m["name"] in TOKEN_METRICS), None)
            lines += [f"### {rec['notebook']}", "",
                      f"date {str(rec.get('started', '?'))[:10]} · commit `{git.get('commit', '?')}`"
                      f"{' (dirty)' if git.get('dirty') else ''} · {hw} · wall time {rec.get('duration_s', 0) / 60:.1f} min"
                      f" · teacher tokens {format_value(tokens['value']) if tokens else 'n/a'}", "",
                      "| metric | value |", "|---|---|"]
            lines += [f"| {m['name']} | {format_value(m['value'], m.get('std'))}{(' ' + m['unit']) if m.get('unit') else ''} |"
                      for m in rec.get("metrics", [])]
            lines.append("")
    return "\n".join(lines)


def write_results_md(out_dir: Path) -> Path:
    path = out_dir / "RESULTS.md"
    path.write_text(results_markdown(out_dir / "results"), encoding="utf-8")
    return path
