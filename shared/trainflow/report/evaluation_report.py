"""The evaluate stage's HTML report and Markdown summary: what a person reads in the Kubeflow UI.

The HTML page is one file: plots are PNG data URIs, the style is inline, and it
references nothing outside itself (no URLs, fonts or scripts), so it renders the
same in the KFP UI's sandboxed frame, offline, or attached to an e-mail.
"""

from __future__ import annotations

import html
from typing import Any

from trainflow.evaluation.record_outputs import RecordOutputs
from trainflow.report import figures
from trainflow.report.evaluation_sections import validation_prompts_section
from trainflow.report.html_parts import STYLE, comparison_rows, fmt, image, interval, table
from trainflow.tasks import TaskDefinition, get_task


def headline_header(task: TaskDefinition, short: bool) -> list[str]:
    """The headline table's columns; `short` for Markdown (best/last/base rather than best checkpoint/...)."""
    reference = [task.reference.column if short else task.reference.label] if task.reference else []
    best, last = ("best", "last") if short else ("best checkpoint", "last checkpoint")
    return ["metric", best, "95% interval", last, *reference, "better is"]


def headline_rows(task: TaskDefinition, results: dict[str, Any]) -> list[list[str]]:
    """metric | best | 95% interval | last | (the task's reference) | better is — cells already escaped."""
    rows = []
    for spec in task.headline_metrics:
        key = spec.key
        if not isinstance(results.get(key), float):
            continue
        row = [key, fmt(results[key]), interval(results, key), fmt(results.get(f"last_{key}"))]
        if task.reference is not None:
            row.append(fmt(results.get(f"{task.reference.prefix}{key}")))
        rows.append(row + [spec.better_is])
    return rows


def _facts(results: dict[str, Any], record: dict[str, Any], records: int) -> str:
    rows = [["test records", fmt(records)],
            ["monitored metric", f"{fmt(record.get('monitor'))} (best value {fmt(record.get('best_value'))})"],
            ["best checkpoint", f"step {fmt(record.get('best_step'))}, epoch {fmt(record.get('best_epoch'))}"],
            ["last checkpoint", f"step {fmt(record.get('steps_run'))}, epoch {fmt(record.get('epochs_run'))}"],
            ["stopped because", fmt(record.get("stop_reason"))]]
    return table(None, rows, "facts")


def _best_vs_last(results: dict[str, Any]) -> str:
    if results.get("last_checkpoint_skipped"):
        return f'<p class="note">Last checkpoint not scored: {html.escape(results["last_checkpoint_skipped"])}.</p>'
    if results.get("last_is_best"):
        return "<p>The best checkpoint is the last one: early stopping changed nothing here.</p>"
    compared = results.get("best_vs_last") or {}
    intro = ("<p>The shipped model is the best checkpoint by validation; the last checkpoint is what training "
             "without early stopping would have shipped. Both scored on the same test records; the improvement "
             "is best − last in each metric's better direction, with its paired-bootstrap 95% interval.</p>")
    if not compared:
        return intro + '<p class="note">No paired comparison (evaluate.bootstrap_resamples is 0).</p>'
    header = ["metric", "best", "last", "improvement", "95% interval", "P(best better)", "verdict"]
    return intro + table(header, comparison_rows(compared), "text-last")


def _historytable(history: list[dict[str, Any]]) -> str:
    if not history:
        return ""
    columns = list(history[0])
    rows = [[fmt(row.get(c)) for c in columns] for row in history]
    return f"<details><summary>Every validation ({len(history)})</summary>{table(columns, rows)}</details>"


def _skipped(results: dict[str, Any]) -> str:
    skipped = dict(results.get("skipped") or {})
    if not skipped:
        return ""
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in skipped.items())
    return f"<h2>Not computed</h2><ul>{items}</ul>"


def evaluation_html(scored: RecordOutputs, results: dict[str, Any], record: dict[str, Any]) -> str:
    """The whole report page for one evaluated model.

    Inputs: the per-record outputs (for plots), the evaluate stage's results and the train
    stage's record (history, best/last step, stop reason). Output: an HTML document.
    """
    task = get_task(scored.task)
    curves = figures.training_curves(record.get("history") or [], str(record.get("monitor")), record.get("best_step"),
                                     record.get("steps_run"))
    parts = [
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>trainflow evaluation: {html.escape(task.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Evaluation of the {html.escape(task.name.replace('_', '-'))} model on the test split</h1>",
        _facts(results, record, len(scored.record_ids)),
        "<h2>Headline metrics</h2>",
        table(headline_header(task, short=False), headline_rows(task, results), "text-last"),
        '<p class="note">Intervals: seeded percentile bootstrap over test records (95%).</p>',
        "<h2>Best vs last checkpoint</h2>", _best_vs_last(results),
        "<h2>Validation during training</h2>", image(curves, "validation curve"), _historytable(record.get("history") or []),
        validation_prompts_section(record.get("validation_prompts")),
        task.report_section(scored, results),
        _skipped(results),
        '<p class="note">Per-record test outputs are in this run\'s predictions artifact, so the model can be '
        "compared with another (<code>trainflow compare</code>, or the register stage's beat_champion gate) without re-running it.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def evaluation_markdown(task_name: str, results: dict[str, Any], record: dict[str, Any]) -> str:
    """A short Markdown summary: headline metrics with intervals, best vs last, why training stopped."""
    task = get_task(task_name)
    lines = [f"# Evaluation ({task.name}) on the test split", "",
             f"Best checkpoint: step {record.get('best_step')} (epoch {record.get('best_epoch')}) by "
             f"{record.get('monitor')}; training ran {record.get('steps_run')} steps and stopped because "
             f"{record.get('stop_reason')}.", ""]
    header = headline_header(task, short=True)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in headline_rows(task, results)]
    lines.append("")
    if results.get("last_checkpoint_skipped"):
        lines.append(f"Last checkpoint not scored: {results['last_checkpoint_skipped']}.")
    elif results.get("last_is_best"):
        lines.append("The best checkpoint is the last one: early stopping changed nothing.")
    for key, result in (results.get("best_vs_last") or {}).items():
        if "skipped" not in result:
            lines.append(f"- best vs last, {key}: improvement {result['improvement']:+.4g} "
                         f"(95% interval {result['improvement_low']:+.4g} to {result['improvement_high']:+.4g}); {result['verdict']}")
    for key, result in (results.get("vs_base") or {}).items():
        if "skipped" not in result:
            lines.append(f"- fine-tuned vs base, {key}: improvement {result['improvement']:+.4g} "
                         f"(95% interval {result['improvement_low']:+.4g} to {result['improvement_high']:+.4g}); {result['verdict']}")
    for key, reason in (results.get("skipped") or {}).items():
        lines.append(f"- {key} not computed: {reason}")
    return "\n".join(lines) + "\n"
