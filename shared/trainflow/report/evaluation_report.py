"""The evaluate stage's HTML report and Markdown summary: what a person reads in the Kubeflow UI.

The HTML page is one file: plots are PNG data URIs, the style is inline, and it
references nothing outside itself (no URLs, fonts or scripts), so it renders the
same in the KFP UI's sandboxed frame, offline, or attached to an e-mail.
"""

from __future__ import annotations

import html
from typing import Any

from trainflow.evaluation.record_outputs import HEADLINE_METRICS, RecordOutputs
from trainflow.metrics.metric_directions import is_lower_better
from trainflow.report import figures

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


def _interval(results: dict[str, Any], key: str) -> str:
    low, high = results.get(f"{key}_ci_low"), results.get(f"{key}_ci_high")
    return f"{fmt(low)} – {fmt(high)}" if low is not None and high is not None else "—"


def _table(header: list[str] | None, rows: list[list[str]], css: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}">{head}{body}</table>'


def _image(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">' if uri else f'<p class="note">{html.escape(alt)}: nothing to plot.</p>'


def headline_rows(task: str, results: dict[str, Any]) -> list[list[str]]:
    """metric | best | 95% interval | last | (base) | better is — cells already escaped."""
    rows = []
    for key in HEADLINE_METRICS[task]:
        if not isinstance(results.get(key), float):
            continue
        row = [key, fmt(results[key]), _interval(results, key), fmt(results.get(f"last_{key}"))]
        if task == "text_to_image":
            row.append(fmt(results.get(f"base_{key}")))
        rows.append(row + ["lower" if is_lower_better(key) else "higher"])
    return rows


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


def _facts(results: dict[str, Any], record: dict[str, Any], records: int) -> str:
    rows = [["test records", fmt(records)],
            ["monitored metric", f"{fmt(record.get('monitor'))} (best value {fmt(record.get('best_value'))})"],
            ["best checkpoint", f"step {fmt(record.get('best_step'))}, epoch {fmt(record.get('best_epoch'))}"],
            ["last checkpoint", f"step {fmt(record.get('steps_run'))}, epoch {fmt(record.get('epochs_run'))}"],
            ["stopped because", fmt(record.get("stop_reason"))]]
    return _table(None, rows, "facts")


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
    return intro + _table(header, comparison_rows(compared), "text-last")


def _classification_section(scored: RecordOutputs, results: dict[str, Any]) -> str:
    from trainflow.report.kfp_classification import roc_points

    names = scored.names
    matrix = results["confusion_matrix"]
    rows = []
    for index, name in enumerate(names):
        rows.append([html.escape(name)] + [fmt(results.get(f"{m}/{name}")) for m in ("precision", "recall", "f1")]
                    + [str(sum(matrix[index]))])
    roc = roc_points(scored.outputs["best"], scored.truth, names)
    parts = ["<h2>Confusion matrix (best checkpoint)</h2>",
             _image(figures.confusion_heatmap(matrix, names, "test split"), "confusion matrix"),
             "<h2>Per class</h2>", _table(["class", "precision", "recall", "F1", "support"], rows),
             f"<h2>ROC curve ({html.escape(roc['kind'])})</h2>",
             _image(figures.roc_plot(roc["fpr"], roc["tpr"], roc["kind"]), "ROC curve"),
             f'<p class="note">ROC-AUC {fmt(results.get("roc_auc"))} ({"the positive class" if len(names) == 2 else "macro average over classes"}), '
             f'PR-AUC {fmt(results.get("pr_auc"))}, ECE {fmt(results.get("ece"))}, log loss {fmt(results.get("log_loss"))}.</p>']
    return "".join(parts)


def _regression_section(scored: RecordOutputs, results: dict[str, Any]) -> str:
    metrics = ("mse", "mae", "rmse", "r2", "mape")
    rows = [[html.escape(name)] + [fmt(results.get(f"{m}/{name}")) for m in metrics] for name in scored.names]
    parts = ["<h2>Per target</h2>", _table(["target", *metrics], rows)]
    baseline = {m: results.get(f"baseline_linear_{m}") for m in ("r2", "rmse", "mae")}
    if any(v is not None for v in baseline.values()):
        parts.append("<p>Baseline: scikit-learn LinearRegression fitted on the same train split: "
                     + ", ".join(f"{k} {fmt(v)}" for k, v in baseline.items()) + ".</p>")
    parts += ["<h2>Predicted against true (best checkpoint)</h2>",
              _image(figures.predicted_vs_true(scored.outputs["best"], scored.truth, scored.names), "scatter")]
    return "".join(parts)


def _segmentation_section(scored: RecordOutputs, results: dict[str, Any]) -> str:
    from trainflow.metrics.segmentation_metrics import per_image_confusion

    names = scored.names
    rows = [[html.escape(name), fmt(results.get(f"iou/{name}")), fmt(results.get(f"dice/{name}"))] for name in names]
    pixels = per_image_confusion(scored.outputs["best"], scored.truth, len(names)).sum(0).tolist()
    return "".join(["<h2>Per class</h2>", _table(["class", "IoU", "Dice"], rows),
                    "<h2>Pixel confusion matrix (best checkpoint)</h2>",
                    _image(figures.confusion_heatmap(pixels, names, "test pixels"), "pixel confusion matrix")])


def _text_to_image_section(results: dict[str, Any]) -> str:
    bars = [("fine-tuned (best)", results["test_loss"], results.get("test_loss_ci_low"), results.get("test_loss_ci_high"))]
    if isinstance(results.get("last_test_loss"), float) and not results.get("last_is_best"):
        bars.append(("last checkpoint", results["last_test_loss"], None, None))
    if isinstance(results.get("base_test_loss"), float):
        bars.append(("base model", results["base_test_loss"], None, None))
    parts = ["<h2>Test denoising loss</h2>",
             "<p>‖ε − ε<sub>θ</sub>(z<sub>t</sub>, t, c)‖² on every test record, with the same seed-fixed noise and "
             "timestep for every model. Lower is better.</p>",
             _image(figures.interval_bars(bars, "test denoising loss"), "test loss comparison")]
    if results.get("vs_base"):
        header = ["metric", "fine-tuned", "base", "improvement", "95% interval", "P(fine-tuned better)", "verdict"]
        parts += ["<h3>Fine-tuned vs base, per test record (paired bootstrap)</h3>", _table(header, comparison_rows(results["vs_base"]), "text-last")]
    return "".join(parts)


def _history_table(history: list[dict[str, Any]]) -> str:
    if not history:
        return ""
    columns = list(history[0])
    rows = [[fmt(row.get(c)) for c in columns] for row in history]
    return f"<details><summary>Every validation ({len(history)})</summary>{_table(columns, rows)}</details>"


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
    task = scored.task
    header = ["metric", "best checkpoint", "95% interval", "last checkpoint"] + (["base model"] if task == "text_to_image" else []) + ["better is"]
    curves = figures.training_curves(record.get("history") or [], str(record.get("monitor")), record.get("best_step"),
                                     record.get("steps_run"))
    detail = {"classification": _classification_section, "regression": _regression_section,
              "segmentation": _segmentation_section}
    parts = [
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>trainflow evaluation: {html.escape(task)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Evaluation of the {html.escape(task.replace('_', '-'))} model on the test split</h1>",
        _facts(results, record, len(scored.record_ids)),
        "<h2>Headline metrics</h2>", _table(header, headline_rows(task, results), "text-last"),
        '<p class="note">Intervals: seeded percentile bootstrap over test records (95%).</p>',
        "<h2>Best vs last checkpoint</h2>", _best_vs_last(results),
        "<h2>Validation during training</h2>", _image(curves, "validation curve"), _history_table(record.get("history") or []),
        detail[task](scored, results) if task in detail else _text_to_image_section(results),
        _skipped(results),
        '<p class="note">Per-record test outputs are in this run\'s predictions artifact, so the model can be '
        "compared with another (<code>trainflow compare</code>, or the register stage's beat_champion gate) without re-running it.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def evaluation_markdown(task: str, results: dict[str, Any], record: dict[str, Any]) -> str:
    """A short Markdown summary: headline metrics with intervals, best vs last, why training stopped."""
    lines = [f"# Evaluation ({task}) on the test split", "",
             f"Best checkpoint: step {record.get('best_step')} (epoch {record.get('best_epoch')}) by "
             f"{record.get('monitor')}; training ran {record.get('steps_run')} steps and stopped because "
             f"{record.get('stop_reason')}.", ""]
    header = ["metric", "best", "95% interval", "last"] + (["base"] if task == "text_to_image" else []) + ["better is"]
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
