"""Render a report in headless Chromium and save a screenshot: proof that the HTML shows in a real browser.

`python tools/report_screenshot.py [--config C] [--out DIR]` (what `make report-screenshot` runs) trains
a small model from a supervised config (default: the digits classifier, a few epochs), evaluates it with
every report output, and screenshots the HTML report. A developer tool: it drives the stages like the CLI
does, so it lives outside the library.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from trainflow.errors import UserFacingError

CHROMIUM = Path("/usr/bin/chromium")
DEFAULT_CONFIG = "pipelines/configs/digits-classifier.yaml"
# Flags that keep a headless run offline and self-contained: no GPU, no sandbox (containers run as root),
# no profile state, no background traffic (the report must need none).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def screenshot_html(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 3600,
                    chromium: str | Path = CHROMIUM, timeout_s: int = 120) -> Path:
    """Load `html_path` in headless Chromium and write a width×height PNG of the page to `png_path`.

    Raises UserFacingError when Chromium is missing, fails, or writes no PNG (with its last output lines).
    """
    chromium, html_file, png_file = Path(chromium), Path(html_path).resolve(), Path(png_path).resolve()
    if not chromium.is_file():
        raise UserFacingError(f"{chromium} is missing; install Chromium (Debian: apt-get install chromium) to take report screenshots")
    if not html_file.is_file():
        raise UserFacingError(f"{html_file} does not exist; build the report first")
    png_file.parent.mkdir(parents=True, exist_ok=True)
    png_file.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="trainflow-chromium-") as profile:
        command = [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png_file}",
                   f"--window-size={width},{height}", html_file.as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise UserFacingError(f"Chromium did not finish rendering {html_file} within {timeout_s} s") from None
    if not png_file.is_file() or png_file.stat().st_size == 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise UserFacingError(f"Chromium wrote no screenshot of {html_file} (exit {done.returncode}): {tail}")
    return png_file


def build_sample_report(config_path: str | Path, folder: str | Path, max_epochs: int) -> Path:
    """Ingest, cache, train (at most `max_epochs`) and evaluate `config_path`'s run under `folder`; returns the HTML report."""
    from trainflow.artifacts import LocalArtifact
    from trainflow.config import load_config, section_payload
    from trainflow.stages.build_cache import build_cache
    from trainflow.stages.evaluate import evaluate
    from trainflow.stages.ingest_split import ingest_split
    from trainflow.stages.train import train

    config = load_config(config_path)
    root = Path(folder)
    out = {name: LocalArtifact(str(root / name)) for name in
           ("dataset", "ingest-report.md", "cache", "model", "train-metrics.json", "metrics.json", "report.html",
            "summary.md", "predictions", "classification-metrics.json")}
    model, train_cfg = section_payload(config.model), {**section_payload(config.train), "max_epochs": max_epochs}
    train_cfg.pop("max_steps", None)
    ingest_split(section_payload(config.ingest), config.seed, out["dataset"], out["ingest-report.md"], task=config.task,
                 model_base=config.model.base)
    build_cache(out["dataset"].path, model, section_payload(config.cache), out["cache"], task=config.task)
    train(config.task, out["cache"].path, model, train_cfg, config.seed, out["model"], out["train-metrics.json"],
          checkpoint_dir=str(root / "checkpoints"))
    evaluate(out["cache"].path, out["model"].path, model, section_payload(config.evaluate), config.seed,
             out["metrics.json"], task=config.task, report=out["report.html"], summary=out["summary.md"],
             predictions=out["predictions"], classification=out["classification-metrics.json"])
    return Path(out["report.html"].path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/report_screenshot.py",
                                     description="Build a small evaluation report and screenshot it in headless Chromium.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"run YAML to train briefly and evaluate (default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", default=".trainflow/report-screenshot", help="folder for the run, report.html and report.png")
    parser.add_argument("--max-epochs", type=int, default=4, help="train at most this many epochs (default: 4)")
    parser.add_argument("--html", default=None, help="screenshot this existing HTML file instead of building a report")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=3600)
    args = parser.parse_args(argv)
    try:
        out = Path(args.out)
        if args.html:
            report = Path(args.html)
        else:
            import shutil

            shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run: no resume from an older one
            report = build_sample_report(args.config, out / "run", args.max_epochs)
        png = screenshot_html(report, out / "report.png", args.width, args.height)
    except UserFacingError as error:
        print(f"report-screenshot: error: {error}", file=sys.stderr)
        return 2
    print(f"report-screenshot: {report} rendered by Chromium into {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
