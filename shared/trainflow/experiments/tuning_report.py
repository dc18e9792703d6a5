"""What a person looks at after a study: an HTML report (figures as PNG, inline and beside it) and a console summary.

Figures: with several objectives, the Pareto front (first two objectives) and a table of its trials with the
refit's pick and the rule that made it; the optimisation history (each complete trial's first objective and the best so far), parameter
importances (Optuna's default evaluator, PED-ANOVA in Optuna 5, when at least two complete trials vary), and a slice plot per parameter.
The trial table lists every trial with its state (complete, pruned, failed; superseded and over-budget
ones marked), and the refit's test metrics are the only test numbers shown.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from trainflow.atomic_files import atomic_write_text
from trainflow.report.figures import png_data_uri


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def history_figure(results: dict[str, Any]) -> str | None:
    objective = results["objectives"][0]
    rows = [r for r in results["trials"] if r["state"] == "complete"]
    if not rows:
        return None
    plt = _plt()
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    xs = [r["number"] for r in rows]
    ys = [r["values"][objective["metric"]] for r in rows]
    best, running = [], None
    for y in ys:
        running = y if running is None else (min(running, y) if objective["direction"] == "minimize" else max(running, y))
        best.append(running)
    pruned = [r for r in results["trials"] if r["state"] == "pruned" and "last_reported" in r]
    axis.scatter(xs, ys, s=18, label="complete", color="#2166ac")
    if pruned:
        axis.scatter([r["number"] for r in pruned], [r["last_reported"] for r in pruned], s=14, marker="x",
                     color="#b2182b", label="pruned (last report)")
    axis.step(xs, best, where="post", color="#1b7837", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel(f"{objective['metric']} ({objective['direction']})")
    axis.legend(fontsize=8)
    axis.set_title("Optimisation history")
    return png_data_uri(figure)


def importance_figure(results: dict[str, Any]) -> str | None:
    importances = results.get("importances") or {}
    if not importances:
        return None
    plt = _plt()
    names = list(importances)[::-1]
    figure, axis = plt.subplots(figsize=(6.4, 0.5 + 0.4 * len(names)))
    axis.barh(names, [importances[n] for n in names], color="#4393c3")
    axis.set_xlabel("importance (Optuna PED-ANOVA, sums to 1)")
    axis.set_title("Parameter importances")
    return png_data_uri(figure)


def slice_figure(results: dict[str, Any]) -> str | None:
    objective = results["objectives"][0]["metric"]
    rows = [r for r in results["trials"] if r["state"] == "complete"]
    names = sorted({name for r in rows for name in r["params"]})
    if not rows or not names:
        return None
    plt = _plt()
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for axis, name in zip(axes[0], names):
        points = [(r["params"][name], r["values"][objective]) for r in rows if name in r["params"]]
        values = [p[0] for p in points]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        xs = values if numeric else [str(v) for v in values]
        axis.scatter(xs, [p[1] for p in points], c=[r["number"] for r in rows if name in r["params"]], cmap="viridis", s=16)
        if numeric and values and min(values) > 0 and max(values) / min(values) > 50:
            axis.set_xscale("log")
        axis.set_xlabel(name.rsplit(".", 1)[-1])
        axis.set_ylabel(objective)
    figure.suptitle("Slice: objective by parameter (colour: trial number)")
    return png_data_uri(figure)


def pareto_figure(results: dict[str, Any]) -> str | None:
    """The first two objectives of every complete trial, the Pareto-optimal ones and the refit's pick marked."""
    objectives = results["objectives"]
    if len(objectives) < 2 or not results.get("pareto_front"):
        return None
    (x_name, x_dir), (y_name, y_dir) = ((o["metric"], o["direction"]) for o in objectives[:2])
    rows = [r for r in results["trials"] if r["state"] == "complete"]
    front = set(results["pareto_front"])
    plt = _plt()
    figure, axis = plt.subplots(figsize=(5.6, 4.0))
    others = [r for r in rows if r["number"] not in front]
    axis.scatter([r["values"][x_name] for r in others], [r["values"][y_name] for r in others], s=16, color="#999999",
                 label="dominated")
    on_front = sorted((r for r in rows if r["number"] in front), key=lambda r: r["values"][x_name])
    axis.plot([r["values"][x_name] for r in on_front], [r["values"][y_name] for r in on_front], "o-", color="#2166ac",
              label="Pareto front")
    best = results.get("best")
    if best:
        axis.scatter([best["values"][x_name]], [best["values"][y_name]], s=120, facecolors="none", edgecolors="#b2182b",
                     linewidths=2, label=f"refit: trial {best['number']}")
    axis.set_xlabel(f"{x_name} ({x_dir})")
    axis.set_ylabel(f"{y_name} ({y_dir})")
    axis.legend(fontsize=8)
    axis.set_title("Pareto front")
    return png_data_uri(figure)


def pareto_table(results: dict[str, Any]) -> str:
    """The Pareto-optimal trials with every objective's value, the refit's pick marked, and the rule that picked it."""
    metrics = [o["metric"] for o in results["objectives"]]
    by_number = {r["number"]: r for r in results["trials"]}
    chosen = (results.get("best") or {}).get("number")
    header = "".join(f"<th>{html.escape(m)} ({o['direction']})</th>" for m, o in zip(metrics, results["objectives"]))
    rows = "".join(
        f"<tr><td>{n}{' (refit)' if n == chosen else ''}</td>"
        + "".join(f"<td>{_cell(by_number[n]['values'].get(m))}</td>" for m in metrics)
        + f"<td>{_cell(by_number[n]['params'])}</td></tr>" for n in results["pareto_front"])
    return (f"<h2>Pareto front ({len(results['pareto_front'])} trials)</h2><p>No complete trial is at least as good on "
            f"every objective and better on one than a trial on the front; the refit picks {html.escape(results['refit_rule'])}.</p>"
            f"<table><tr><th>trial</th>{header}<th>parameters</th></tr>{rows}</table>")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    if isinstance(value, dict):
        return html.escape(", ".join(f"{k.rsplit('.', 1)[-1]}={_cell(v)}" for k, v in value.items()))
    return html.escape("" if value is None else str(value))


def tuning_html(results: dict[str, Any], figures: dict[str, str]) -> str:
    counts = results["counts"]
    best = results.get("best")
    parts = [f"<h1>Study {html.escape(results['study_name'])}</h1>",
             f"<p>{counts['finished']} finished trials: {counts['complete']} complete, {counts['pruned']} pruned, "
             f"{counts['fail']} failed; {counts['superseded']} continued after a stopped worker. "
             f"CPU-seconds in trials: {results['cpu_seconds']:.1f}. Trials are scored on the validation split only.</p>"]
    if best:
        parts.append(f"<h2>Best trial: {best['number']}</h2><p>Rule: {html.escape(results['refit_rule'])}.</p>"
                     f"<p>Parameters: {_cell(best['params'])}<br>Validation: {_cell(best['values'])}</p>")
    if results.get("pareto_front"):
        parts.append(pareto_table(results))
    refit = results.get("refit")
    if refit:
        parts.append("<h2>Final model (refit of the best trial) on the test split</h2><table>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{_cell(v)}</td></tr>" for k, v in sorted(refit["test_metrics"].items())
            if not k.endswith(("_ci_low", "_ci_high")) and not k.startswith(("stage", "best_", "steps", "epochs"))) + "</table>")
        registration = refit["registration"]
        parts.append(f"<p>Registered: {registration.get('registered')} ({html.escape(str(registration.get('model_name')))} "
                     f"version {registration.get('model_version')}); {html.escape('; '.join(registration.get('reasons') or []))}</p>")
    for key, title in (("pareto", "Pareto front"), ("history", "Optimisation history"),
                       ("importances", "Parameter importances"), ("slice", "Slice")):
        if key in figures:
            parts.append(f"<h2>{title}</h2><img alt='{title}' src='{figures[key]}'>")
    if results.get("importance_note"):
        parts.append(f"<p>Parameter importances: {html.escape(results['importance_note'])}</p>")
    header = ["trial", "slot", "state", "parameters", "values", "best step", "steps", "seconds", "CPU s", "why"]
    rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in (
        r["number"], r["slot"], r["state"], r["params"], r["values"], r.get("best_step"), r.get("steps_run"),
        r.get("seconds"), r.get("cpu_seconds"), r.get("error") or r.get("stop_reason"))) + "</tr>" for r in results["trials"])
    parts.append("<h2>Trials</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + rows + "</table>")
    style = ("body{font-family:sans-serif;margin:1.5em;max-width:70em}table{border-collapse:collapse;font-size:0.85em}"
             "td,th{border:1px solid #ccc;padding:0.2em 0.5em;text-align:left}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Study {html.escape(results['study_name'])}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"


def write_tuning_report(outcome: Any, folder: Path) -> Path:
    """report.html (self-contained) plus each figure as a PNG file in `folder`; returns the HTML path."""
    results = outcome.results
    figures = {name: uri for name, uri in (("pareto", pareto_figure(results)), ("history", history_figure(results)),
                                           ("importances", importance_figure(results)), ("slice", slice_figure(results)))
               if uri}
    folder.mkdir(parents=True, exist_ok=True)
    for name, uri in figures.items():
        (folder / f"{name}.png").write_bytes(base64.b64decode(uri.split(",", 1)[1]))
    path = folder / "report.html"
    atomic_write_text(path, tuning_html(results, figures))
    return path


def print_study_summary(results: dict[str, Any], report: Path | None) -> None:
    counts = results["counts"]
    print(f"tune: {counts['finished']} trials finished ({counts['complete']} complete, {counts['pruned']} pruned, "
          f"{counts['fail']} failed), {results['cpu_seconds']:.1f} CPU-seconds in trials")
    best = results.get("best")
    if best:
        print(f"tune: best trial {best['number']}: {json.dumps(best['values'])} with {json.dumps(best['params'])}")
    if results.get("pareto_front"):
        print(f"tune: Pareto front: trials {', '.join(str(n) for n in results['pareto_front'])}; the refit took "
              f"{results['refit_rule']}")
    refit = results.get("refit")
    if refit:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in refit["test_metrics"].items()
                          if k in ("accuracy", "f1_macro", "r2", "rmse", "mae", "mean_iou", "test_loss"))
        registration = refit["registration"]
        state = (f"registered {registration['model_name']} version {registration['model_version']}"
                 if registration.get("registered") else f"not registered: {'; '.join(registration.get('reasons') or [])}")
        print(f"tune: final model (best configuration refit) on the test split: {shown}; {state}")
    if report is not None:
        print(f"tune: report {report}")
