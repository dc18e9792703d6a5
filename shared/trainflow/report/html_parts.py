"""Pieces every trainflow HTML page is built from: inline style, number formatting, tables, PNG images, comparison rows."""

from __future__ import annotations

import html
from typing import Any

STYLE = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child,.text-last td:last-child,.text-last th:last-child{text-align:left}
.facts td:first-child{font-weight:bold}
.note{color:#555;font-size:13px} .good{color:#1b7837} .bad{color:#b2182b} img{max-width:100%}
.facts td{text-align:left}
"""


def fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else html.escape(str(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def interval(results: dict[str, Any], key: str) -> str:
    low, high = results.get(f"{key}_ci_low"), results.get(f"{key}_ci_high")
    return f"{fmt(low)} – {fmt(high)}" if low is not None and high is not None else "—"


def table(header: list[str] | None, rows: list[list[str]], css: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}">{head}{body}</table>'


def image(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">' if uri else f'<p class="note">{html.escape(alt)}: nothing to plot.</p>'


def comparison_rows(compared: dict[str, Any]) -> list[list[str]]:
    """metric | a | b | improvement | interval | P(a better) | verdict, from compare_arrays results."""
    rows = []
    for key, result in compared.items():
        if "skipped" in result:
            rows.append([key, "—", "—", "—", "—", "—", html.escape(result["skipped"])])
            continue
        css = "good" if result["improvement_low"] > 0 else "bad" if result["improvement_high"] < 0 else ""
        rows.append([key, fmt(result["a"]), fmt(result["b"]), f"{result['improvement']:+.4g}",
                     f"{result['improvement_low']:+.4g} – {result['improvement_high']:+.4g}", f"{result['p_better']:.3f}",
                     f'<span class="{css}">{html.escape(result["verdict"])}</span>'])
    return rows
