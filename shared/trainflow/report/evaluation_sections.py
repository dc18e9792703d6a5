"""Each task's own part of the evaluation report (its task module asks for it): per-class tables, plots, comparisons."""

from __future__ import annotations

import html
from typing import Any

from trainflow.evaluation.record_outputs import RecordOutputs
from trainflow.report import figures
from trainflow.report.html_parts import comparison_rows, fmt, image, table

def classification_section(scored: RecordOutputs, results: dict[str, Any]) -> str:
    from trainflow.report.kfp_classification import roc_points

    names = scored.names
    matrix = results["confusion_matrix"]
    rows = []
    for index, name in enumerate(names):
        rows.append([html.escape(name)] + [fmt(results.get(f"{m}/{name}")) for m in ("precision", "recall", "f1")]
                    + [str(sum(matrix[index]))])
    roc = roc_points(scored.outputs["best"], scored.truth, names)
    parts = ["<h2>Confusion matrix (best checkpoint)</h2>",
             image(figures.confusion_heatmap(matrix, names, "test split"), "confusion matrix"),
             "<h2>Per class</h2>", table(["class", "precision", "recall", "F1", "support"], rows),
             f"<h2>ROC curve ({html.escape(roc['kind'])})</h2>",
             image(figures.roc_plot(roc["fpr"], roc["tpr"], roc["kind"]), "ROC curve"),
             f'<p class="note">ROC-AUC {fmt(results.get("roc_auc"))} ({"the positive class" if len(names) == 2 else "macro average over classes"}), '
             f'PR-AUC {fmt(results.get("pr_auc"))}, ECE {fmt(results.get("ece"))}, log loss {fmt(results.get("log_loss"))}.</p>']
    return "".join(parts)


def regression_section(scored: RecordOutputs, results: dict[str, Any]) -> str:
    metrics = ("mse", "mae", "rmse", "r2", "mape")
    rows = [[html.escape(name)] + [fmt(results.get(f"{m}/{name}")) for m in metrics] for name in scored.names]
    parts = ["<h2>Per target</h2>", table(["target", *metrics], rows)]
    baseline = {m: results.get(f"baseline_linear_{m}") for m in ("r2", "rmse", "mae")}
    if any(v is not None for v in baseline.values()):
        parts.append("<p>Baseline: scikit-learn LinearRegression fitted on the same train split: "
                     + ", ".join(f"{k} {fmt(v)}" for k, v in baseline.items()) + ".</p>")
    parts += ["<h2>Predicted against true (best checkpoint)</h2>",
              image(figures.predicted_vs_true(scored.outputs["best"], scored.truth, scored.names), "scatter")]
    return "".join(parts)


def segmentation_section(scored: RecordOutputs, results: dict[str, Any]) -> str:
    from trainflow.metrics.segmentation_metrics import per_image_confusion

    names = scored.names
    rows = [[html.escape(name), fmt(results.get(f"iou/{name}")), fmt(results.get(f"dice/{name}"))] for name in names]
    pixels = per_image_confusion(scored.outputs["best"], scored.truth, len(names)).sum(0).tolist()
    return "".join(["<h2>Per class</h2>", table(["class", "IoU", "Dice"], rows),
                    "<h2>Pixel confusion matrix (best checkpoint)</h2>",
                    image(figures.confusion_heatmap(pixels, names, "test pixels"), "pixel confusion matrix")])


def text_to_image_section(results: dict[str, Any]) -> str:
    bars = [("fine-tuned (best)", results["test_loss"], results.get("test_loss_ci_low"), results.get("test_loss_ci_high"))]
    if isinstance(results.get("last_test_loss"), float) and not results.get("last_is_best"):
        bars.append(("last checkpoint", results["last_test_loss"], None, None))
    if isinstance(results.get("base_test_loss"), float):
        bars.append(("base model", results["base_test_loss"], None, None))
    parts = ["<h2>Test denoising loss</h2>",
             "<p>‖ε − ε<sub>θ</sub>(z<sub>t</sub>, t, c)‖² on every test record, with the same seed-fixed noise and "
             "timestep for every model. Lower is better.</p>",
             image(figures.interval_bars(bars, "test denoising loss"), "test loss comparison")]
    if results.get("vs_base"):
        header = ["metric", "fine-tuned", "base", "improvement", "95% interval", "P(fine-tuned better)", "verdict"]
        parts += ["<h3>Fine-tuned vs base, per test record (paired bootstrap)</h3>", table(header, comparison_rows(results["vs_base"]), "text-last")]
    return "".join(parts)


def validation_prompts_section(record: dict[str, Any] | None) -> str:
    """The validation prompts' grids (the step-0 weights' and the latest) and their scores per step, from the training
    record (train.validation_prompts); empty when training drew none."""
    if not record:
        return ""
    prompts = "".join(f"<li>{html.escape(prompt)}</li>" for prompt in record["prompts"])
    parts = ["<h2>Validation prompts during training</h2>",
             f"<p>One image per prompt (left to right), each from the same fixed seed at every drawing.</p><ol>{prompts}</ol>"]
    for grid in record["grids"]:
        label = "before training (step 0)" if grid["step"] == 0 else f"latest, step {grid['step']}"
        parts += [f"<h3>{html.escape(label)}</h3>", image(grid["png"], f"validation prompts at step {grid['step']}")]
    history = record["history"]
    columns = sorted({name for row in history for name in row if name != "step"})
    if columns:
        rows = [[str(row["step"])] + [fmt(row.get(name)) for name in columns] for row in history]
        parts.append(table(["step", *columns], rows))
    return "".join(parts)
