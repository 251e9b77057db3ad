"""The report's page: figures embedded in one HTML file, with a summary."""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lillith.report import figures
from lillith.report.data import read_labels, read_scores, read_state


def _when(scores: Any, row: int) -> str:
    t = float(scores.t[row])
    if scores.dated:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"row {row}"


def write_report(scores_csv: Path, out: Path, *, labels: Path | None = None,
                 state: str | None = None) -> dict[str, Any]:
    """Write ``out/index.html`` and its PNGs; return what was written.

    Parameters
    ----------
    scores_csv : Path
        A ``lillith replay`` output (the input's columns plus the scores).
    out : Path
        Directory (created).
    labels : Path, optional
        NAB labels JSON or a CSV with label columns (SKAB): windows shaded.
    state : str, optional
        State directory: the SOM's U-matrix and hit map, and the lineage when
        evolution ran.

    Returns
    -------
    dict
        ``html``: the page; ``figures``: PNG file -> its panel titles; ``rows``,
        ``alarms`` (onsets), ``labelled_windows``, ``alarms_in_windows``.

    Raises
    ------
    lillith.report.data.ReportError
        Unreadable inputs, or matplotlib missing.
    """
    scores = read_scores(scores_csv)
    windows = read_labels(labels, scores) if labels is not None else []
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}
    made["channels.png"] = figures.channels_figure(scores, windows, out / "channels.png")
    made["scores.png"] = figures.scores_figure(scores, windows, out / "scores.png")
    if state is not None:
        view = read_state(state)
        if view.umatrix is not None:
            made["som.png"] = figures.som_figure(view, out / "som.png")
        if view.births is not None:
            made["lineage.png"] = figures.lineage_figure(view, out / "lineage.png")
    onsets = scores.onsets
    inside = sum(any(a <= scores.t[k] <= b for a, b in windows) for k in onsets)
    rows = [("scores file", str(scores_csv)), ("rows", str(scores.t.size)),
            ("channels", ", ".join(scores.channels)),
            ("alarm onsets", str(len(onsets))),
            ("rows in alarm", str(int(scores.alarm.sum())))]
    if labels is not None:
        rows += [("labels file", str(labels)), ("labelled windows", str(len(windows))),
                 ("onsets inside a window", f"{inside} of {len(onsets)}")]
    if state is not None:
        rows.append(("state", str(state)))
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                      for k, v in rows)
    alarm_rows = "\n".join(
        f"<tr><td>{html.escape(_when(scores, k))}</td>"
        f"<td>{html.escape(scores.reasons[k] if k < len(scores.reasons) else '')}</td>"
        f"<td>{scores.likelihood[k]:.6f}</td></tr>" for k in onsets[:200])
    imgs = "\n".join(
        f'<figure><img alt="{html.escape(", ".join(titles))}" src="data:image/png;base64,'
        f'{base64.b64encode((out / name).read_bytes()).decode()}"><figcaption>'
        f'{html.escape(name)}: {html.escape("; ".join(titles))}</figcaption></figure>'
        for name, titles in made.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>lillith report: {html.escape(scores_csv.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}
img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head><body>
<h1>lillith report: {html.escape(scores_csv.name)}</h1>
<table>{table}</table>
<p>Red: alarm periods (shaded) and onsets (lines); green: labelled windows.</p>
{imgs}
<h2>Alarm onsets</h2>
<table><tr><th>when</th><th>reason</th><th>likelihood</th></tr>
{alarm_rows}</table>
</body></html>
"""
    (out / "index.html").write_text(page)
    return {"html": str(out / "index.html"), "figures": made, "rows": int(scores.t.size),
            "alarms": len(onsets), "labelled_windows": len(windows),
            "alarms_in_windows": inside}
