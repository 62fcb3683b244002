"""A run's ``index.html``: one row per scan, best score first, its quick look and links to its files.

Plain HTML with relative links and no script or external resource, so the page opens from the
output folder in any browser (or from a copy of the folder). Failed scans follow, with their
reason.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .atomic import atomic_path

__all__ = ["write_run_index"]

THUMBNAIL_WIDTH = 480
"""Width of a quick look on the page, in CSS pixels; a click opens the full PNG."""

_STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}"
          ".failed{color:#a00}")

def write_run_index(rows: Sequence[Mapping[str, Any]], outputs: Mapping[str, Mapping[str, str]],
                    links: Sequence[tuple[str, str]], title: str, path: Path | str,
                    summary: str = "summary.csv") -> Path:
    """Write the run's HTML index.

    Args:
        rows: the ``summary.csv`` rows, in its order (finished scans by score, then failed ones):
            ``scan``, ``status`` (``ok`` or ``failed``), ``score_top1pct``, ``score_max_slice``,
            ``anomalous_voxels``, ``shape``, ``error``, ``source``.
        outputs: per finished scan, its output files by key (``anomaly``, ``mask``,
            ``segmentation``, ``dicom_seg``, ``preview``, ``report``), names relative to the page;
            ``preview`` is shown, the others are linked.
        links: ``(key, link text)`` of the outputs a row links to, in this order.
        title: the page's heading.
        path: output file (``index.html``), written atomically.
        summary: the summary table's file name, linked from the page.

    Returns:
        ``path``.
    """
    finished = [row for row in rows if row.get("status") == "ok"]
    failed = [row for row in rows if row.get("status") != "ok"]
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_text(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{_text(title)}</h1>",
             f"<p>{len(finished)} scans finished, {len(failed)} failed; table: "
             f"<a href='{_link(summary)}'>{_text(summary)}</a>.</p>"]
    if finished:
        parts.append("<table><tr><th>#</th><th>scan</th><th>quick look</th><th>scores</th><th>files</th></tr>")
        parts += [_finished_row(rank, row, outputs.get(str(row["scan"]), {}), links) for rank, row in
                  enumerate(finished, 1)]
        parts.append("</table>")
    if failed:
        parts.append("<h2>Failed</h2><table><tr><th>scan</th><th>source</th><th>reason</th></tr>")
        parts += [f"<tr class='failed'><td>{_text(row['scan'])}</td><td>{_text(row.get('source', ''))}</td>"
                  f"<td>{_text(row.get('error', ''))}</td></tr>" for row in failed]
        parts.append("</table>")
    parts.append("</body></html>\n")
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(parts), encoding="utf-8")
    return path


def _finished_row(rank: int, row: Mapping[str, Any], files: Mapping[str, str],
                  links: Sequence[tuple[str, str]]) -> str:
    """The ``<tr>`` of a finished scan."""
    preview = files.get("preview")
    picture = (f"<a href='{_link(preview)}'><img src='{_link(preview)}' width='{THUMBNAIL_WIDTH}' "
               f"alt='quick look of {_text(row['scan'])}'></a>" if preview else "")
    scores = (f"score {_number(row.get('score_top1pct'))}<br>max slice {_number(row.get('score_max_slice'))}<br>"
              f"{_text(row.get('anomalous_voxels', ''))} voxels in the mask<br>shape {_text(row.get('shape', ''))}")
    anchors = "<br>".join(f"<a href='{_link(files[key])}'>{label}</a>" for key, label in links if key in files)
    return (f"<tr><td>{rank}</td><td>{_text(row['scan'])}<br><small>{_text(row.get('source', ''))}</small></td>"
            f"<td>{picture}</td><td>{scores}</td><td>{anchors}</td></tr>")


def _text(value: Any) -> str:
    return html.escape(str(value))


def _link(name: str) -> str:
    """A file name as a relative URL inside a quoted attribute."""
    return html.escape(quote(name), quote=True)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else _text("" if value is None else value)
