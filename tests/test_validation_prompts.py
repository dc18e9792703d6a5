"""Validation prompts during text-to-image training (train.validation_prompts): TensorBoard grids at step 0 and
every N steps, prompt accuracy tracked and monitorable, the report's grids, exact resume, SD and SDXL, and the
config checks that stop a run before anything starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainflow.artifacts import LocalArtifact
from trainflow.config import TrainConfig
from trainflow.config.run import RunConfig
from trainflow.errors import ConfigError, UserFacingError
from trainflow.report.evaluation_sections import validation_prompts_section
from trainflow.stages.build_cache import build_cache
from trainflow.stages.ingest_split import ingest_split
from trainflow.stages.train import train
from trainflow.training.training_log import read_step_log

PROMPTS = ["a handwritten digit three", "a handwritten digit seven"]
TRAIN = {"max_steps": 4, "max_epochs": 5, "batch_size": 8, "device": "cpu", "mixed_precision": "no",
         "optimizer": {"learning_rate": 1e-2}, "schedule": {"name": "constant"},
         "checkpoints": {"every_n_steps": 2, "keep_top_k": 5, "total_limit": 10},
         "logging": {"tensorboard": True, "sample_images": 0},
         "validation_prompts": PROMPTS, "validation_prompts_every": 2}


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cache(tmp: Path, digits_dir: Path, base: Path, family: str = "auto") -> Path:
    dataset, report, cache = (LocalArtifact(str(tmp / name)) for name in ("dataset", "report", "cache"))
    ingest_split({"dataset_dir": str(digits_dir), "resolution": 32, "label_column": "label", "max_records": 30}, 0,
                 dataset, report, task="text_to_image")
    build_cache(dataset.path, {"base": str(base), "family": family}, {"batch_size": 30, "storage_dtype": "float32"}, cache, task="text_to_image")
    return Path(cache.path)


def train_run(cache: Path, base: Path, folder: Path, **overrides) -> Path:
    model, metrics = LocalArtifact(str(folder / "model")), LocalArtifact(str(folder / "metrics"))
    train("text_to_image", str(cache), {"base": str(base)}, {**TRAIN, **overrides}, 0, model, metrics,
          checkpoint_dir=str(folder / "checkpoints"), logs=LocalArtifact(str(folder / "logs")))
    return folder


def events(logs: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(logs), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def sd_cache(tmp_path_factory, digits_dir, tiny_base_model) -> Path:
    return make_cache(tmp_path_factory.mktemp("sd"), digits_dir, tiny_base_model)


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory, sd_cache, tiny_base_model, digits_classifier) -> Path:
    return train_run(sd_cache, tiny_base_model, tmp_path_factory.mktemp("sd-run"),
                     validation_prompt_scoring={"prompt_classifier": str(digits_classifier)})


def test_prompt_grids_and_prompt_accuracy_reach_tensorboard_at_step_0_and_every_n_steps(sd_run):
    logged = events(sd_run / "logs")
    grids = logged.Images("validation_prompts")
    assert [event.step for event in grids] == [0, 2, 4]
    assert all(event.width > event.height for event in grids)  # one row: two prompt images side by side
    accuracy = logged.Scalars("val/prompt_accuracy")
    assert [event.step for event in accuracy] == [0, 2, 4]
    assert all(value.value in (0.0, 0.5, 1.0) for value in accuracy)  # two prompts, each read right or wrong


def test_the_training_record_and_the_report_keep_the_step_0_and_latest_grids(sd_run):
    record = json.loads((sd_run / "model" / "trainflow_training.json").read_text())["validation_prompts"]
    assert record["prompts"] == PROMPTS
    assert [(grid["name"], grid["step"]) for grid in record["grids"]] == [("first", 0), ("latest", 4)]
    assert [row["step"] for row in record["history"]] == [0, 2, 4]
    html = validation_prompts_section(record)
    assert "before training (step 0)" in html and "latest, step 4" in html
    assert html.count("data:image/png;base64,") == 2 and "a handwritten digit seven" in html


def test_the_evaluation_report_shows_the_prompt_grids(sd_run, sd_cache, tiny_base_model, tmp_path):
    from trainflow.stages.evaluate import evaluate

    report = LocalArtifact(str(tmp_path / "report.html"))
    evaluate(str(sd_cache), str(sd_run / "model"), {"base": str(tiny_base_model)}, {"batch_size": 16, "device": "cpu"},
             0, LocalArtifact(str(tmp_path / "metrics")), report=report, task="text_to_image")
    page = Path(report.path).read_text()
    assert "Validation prompts during training" in page and "before training (step 0)" in page


def test_resume_with_validation_prompts_on_gives_the_same_per_step_losses_and_prompt_scores(sd_run, sd_cache,
                                                                                            tiny_base_model,
                                                                                            digits_classifier, tmp_path):
    # A copy of the run as it stood after step 2's checkpoint: resuming it must replay steps 3-4 exactly.
    shutil.copytree(sd_run / "checkpoints", tmp_path / "checkpoints")
    for later in (tmp_path / "checkpoints").glob("step-*"):
        if int(later.name.removeprefix("step-")) > 2:
            shutil.rmtree(later)
    train_run(sd_cache, tiny_base_model, tmp_path, validation_prompt_scoring={"prompt_classifier": str(digits_classifier)})
    full, resumed = read_step_log(sd_run / "checkpoints"), read_step_log(tmp_path / "checkpoints")
    assert [(r["step"], r["loss"]) for r in resumed] == [(r["step"], r["loss"]) for r in full]
    record = json.loads((tmp_path / "model" / "trainflow_training.json").read_text())
    original = json.loads((sd_run / "model" / "trainflow_training.json").read_text())
    assert record["validation_prompts"]["history"] == original["validation_prompts"]["history"]
    assert record["validation_prompts"]["grids"] == original["validation_prompts"]["grids"]
    assert record["resumed_from"] == "step-000000002"


def test_prompt_accuracy_can_be_the_early_stopping_monitor(sd_cache, tiny_base_model, digits_classifier, tmp_path):
    folder = train_run(sd_cache, tiny_base_model, tmp_path, max_steps=2, validation_prompts_every=None,
                       validation={"every_n_steps": 1, "every_epoch": False},
                       early_stopping={"monitor": "val_prompt_accuracy", "patience": None},
                       validation_prompt_scoring={"prompt_classifier": str(digits_classifier)})
    record = json.loads((folder / "model" / "trainflow_training.json").read_text())
    assert record["monitor"] == "val_prompt_accuracy"
    assert [row["step"] for row in record["history"]] == [1, 2]
    assert record["best_value"] == max(row["val_prompt_accuracy"] for row in record["history"])


def test_sdxl_draws_validation_prompts_through_its_two_text_encoders(tmp_path, digits_dir, tiny_sdxl_model):
    cache = make_cache(tmp_path / "cache", digits_dir, tiny_sdxl_model, "sdxl")
    folder = train_run(cache, tiny_sdxl_model, tmp_path / "run", max_steps=2)
    grids = events(folder / "logs").Images("validation_prompts")
    assert [event.step for event in grids] == [0, 2]
    record = json.loads((folder / "model" / "trainflow_training.json").read_text())["validation_prompts"]
    assert record["history"] == [{"step": 0}, {"step": 2}]  # no scorer configured: images only, no number


# ================================================================ config checks, before anything runs

def test_a_prompt_file_is_read_at_config_load_one_prompt_per_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit one\n\n  a handwritten digit two  \n")
    assert TrainConfig(validation_prompts=str(prompts)).validation_prompts == ["a handwritten digit one",
                                                                              "a handwritten digit two"]


@pytest.mark.parametrize("value, words", [
    ([], "no prompts"), ("/no/such/prompts.txt", "cannot be read"), (["x"] * 65, "at most 64"), (7, "list of prompt"),
])
def test_bad_validation_prompts_are_one_sentence_naming_the_field(value, words):
    with pytest.raises(ValueError, match=words) as raised:
        TrainConfig(validation_prompts=value)
    assert "validation_prompts" in str(raised.value)


def run_config(digits_dir, base, classifier, tmp_path, **train) -> dict:
    from conftest import small_config

    return small_config(digits_dir, base, classifier, tmp_path, train={"max_epochs": 1, **train})


@pytest.mark.parametrize("train, words", [
    ({"early_stopping": {"monitor": "val_prompt_accuracy"}}, "validation_prompts, which are not set"),
    ({"validation_prompts": PROMPTS, "early_stopping": {"monitor": "val_clip_score"}},
     "without train.validation_prompt_scoring.clip_model"),
    ({"validation_prompts": PROMPTS, "validation_prompts_every": 3, "early_stopping": {"monitor": "val_prompt_accuracy"},
      "validation_prompt_scoring": {"prompt_classifier": "x"}}, "validation_prompts_every"),
])
def test_a_prompt_monitor_that_cannot_be_measured_stops_the_config(train, words, digits_dir, tiny_base_model,
                                                                   digits_classifier, tmp_path):
    with pytest.raises(ConfigError, match=words):
        from trainflow.config import parse_section

        parse_section(RunConfig, run_config(digits_dir, tiny_base_model, digits_classifier, tmp_path, **train), "test")


def test_a_prompt_naming_no_class_is_refused_when_prompt_accuracy_is_monitored(digits_dir, tiny_base_model,
                                                                               digits_classifier, tmp_path):
    import yaml

    from trainflow.config import load_config

    config = run_config(digits_dir, tiny_base_model, digits_classifier, tmp_path,
                        validation_prompts=["a handwritten digit", "a handwritten digit two"],
                        early_stopping={"monitor": "val_prompt_accuracy"},
                        validation_prompt_scoring={"prompt_classifier": str(digits_classifier)})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserFacingError, match="'a handwritten digit' names 0 of the classifier's classes"):
        load_config(path)


def test_a_supervised_task_refuses_validation_prompts():
    from trainflow.tasks import get_task

    with pytest.raises(ValueError, match="does not generate images"):
        get_task("classification").check_config(None, None, TrainConfig(validation_prompts=PROMPTS))
