"""Prometheus metrics of a training process: scraped over HTTP during a CPU run and parsed with the library's parser."""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))

from engine_tasks import WineTask  # noqa: E402
from trainflow.config import TrainConfig  # noqa: E402
from trainflow.training.engine import Trainer  # noqa: E402
from trainflow.training.prometheus_metrics import STOP_REASONS  # noqa: E402
from trainflow.training.run_identity import RunIdentity  # noqa: E402
from trainflow.training.training_log import read_step_log  # noqa: E402

SETTINGS = {
    "max_epochs": 2, "batch_size": 4, "gradient_accumulation": 2, "device": "cpu", "deterministic": True,
    "optimizer": {"name": "adamw", "learning_rate": 0.01}, "schedule": {"name": "cosine", "warmup_steps": 3},
    "checkpoints": {"every_n_steps": 2}, "validation": {"every_n_steps": 5, "every_epoch": True},
    # min_delta 10: no validation counts as an improvement, so patience 2 stops training at the third (step 15)
    "early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 10.0}, "logging": {"tensorboard": False},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the endpoint, through prometheus_client's text parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def build(folder: Path, task: WineTask, port: int) -> Trainer:
    cfg = TrainConfig.model_validate({**SETTINGS, "logging": {**SETTINGS["logging"], "prometheus_port": port}})
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    return Trainer(task, cfg, folder, 0, identity)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """A run scraped mid-training (from inside step 11, so steps 1-10 are complete) and after it stopped."""
    folder, port = tmp_path_factory.mktemp("metrics"), free_port()
    task, during = WineTask(), {}
    step = task.training_step

    def scraping_step(model, batch):
        if len(task.calls) == 20:  # the first micro-batch of step 11 (accumulation 2)
            during.update(scrape(port))
        return step(model, batch)

    task.training_step = scraping_step
    trainer = build(folder, task, port)
    outcome = trainer.fit()
    after = scrape(port)  # still served after fit(): a scrape sees how training ended
    trainer.close()
    return during, after, read_step_log(folder), outcome


def rank0(name: str) -> tuple[str, tuple]:
    return name, (("rank", "0"),)


def test_mid_run_scrape_matches_the_step_log_and_the_last_validation(scraped):
    during, _, log, outcome = scraped
    tenth = log[9]
    assert tenth["step"] == 10 and during[rank0("trainflow_train_step")] == 10
    assert during[("trainflow_train_loss", ())] == tenth["loss"]  # exact: the text format round-trips floats
    assert during[("trainflow_train_learning_rate", ())] == tenth["lr"]
    assert during[("trainflow_train_epoch", ())] == tenth["epoch"]
    assert during[rank0("trainflow_train_samples_per_second")] == tenth["samples_per_second"] > 0
    assert during[rank0("trainflow_train_data_wait_ratio")] == tenth["data_wait_share"]
    assert 0 <= tenth["data_wait_share"] <= 1

    validation = outcome.history[1]  # the validation at step 10
    assert validation["step"] == 10
    for metric in ("val_loss", "val_accuracy", "train_loss"):
        assert during[("trainflow_validation_value", (("metric", metric),))] == validation[metric]
    best = min(outcome.history[:2], key=lambda h: h["val_loss"])
    assert during[("trainflow_train_best_value", (("monitor", "val_loss"),))] == best["val_loss"]
    assert during[("trainflow_train_best_step", ())] == best["step"]
    for reason in STOP_REASONS:
        assert during[("trainflow_train_early_stops_total", (("reason", reason),))] == 0

    # Checkpoints at steps 2, 4, 5 (validation), 6, 8 and 10.
    assert during[("trainflow_checkpoint_write_seconds_count", ())] == 6
    assert 0 < during[("trainflow_checkpoint_write_seconds_sum", ())] < 60
    assert during[("process_resident_memory_bytes", ())] > 10 * 2**20
    assert not any(name.startswith("trainflow_train_gpu_memory") for name, _ in during), "no GPU on this machine"


def test_the_scrape_after_training_shows_the_last_step_and_the_early_stop_by_reason(scraped):
    _, after, log, outcome = scraped
    assert outcome.stop_kind == "patience" and outcome.steps_run == 15
    assert after[rank0("trainflow_train_step")] == 15 == log[-1]["step"]
    assert after[("trainflow_train_loss", ())] == log[-1]["loss"]
    assert after[("trainflow_train_early_stops_total", (("reason", "patience"),))] == 1
    assert sum(after[("trainflow_train_early_stops_total", (("reason", r),))] for r in STOP_REASONS) == 1
    assert after[("trainflow_validation_value", (("metric", "val_loss"),))] == outcome.history[-1]["val_loss"]


def test_a_port_in_use_is_one_warning_and_training_goes_on(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        trainer = build(tmp_path, WineTask(), port)
        outcome = trainer.fit()
        trainer.close()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"train: warning: cannot serve Prometheus metrics on port {port} (Address already in use); "
                        "training goes on without them (train.logging.prometheus_port)"]
    assert outcome.steps_run == 15


def test_metrics_are_off_by_default_and_the_port_is_bounded():
    assert TrainConfig().logging.prometheus_port is None
    for bad in (-1, 65536):
        with pytest.raises(ValueError, match="prometheus_port"):
            TrainConfig.model_validate({"logging": {"prometheus_port": bad}})
