"""Task semi_supervised: ingest hides labels (seeded, stratified, in the manifest), batches pair labelled records with
unlabelled ones, training resumes bit for bit after SIGKILL and runs under 2-process DDP, the model folder loads back
and predicts; bad inputs are one sentence."""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from task_runs import digits_cache, run_driver, step_losses, torchrun_driver, train_here, write_request  # noqa: E402
from trainflow.artifacts import LocalArtifact  # noqa: E402
from trainflow.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from trainflow.data.cache.supervised_cache import SupervisedCache  # noqa: E402
from trainflow.tasks.semi_supervised import unlabelled_train_ids  # noqa: E402
from trainflow.tasks.semi_supervised_batches import PartlyLabelledBatches  # noqa: E402
from trainflow.data.loading.transforms import SampleKey  # noqa: E402
from trainflow.data.checks.record_validation import IngestRecord  # noqa: E402
from trainflow.errors import UserFacingError  # noqa: E402
from trainflow.tasks import get_task  # noqa: E402
from trainflow.tasks.semi_supervised import pseudo_label_loss  # noqa: E402

MODEL = {"architecture": "small_cnn", "width": 4}
TRAIN = {"max_epochs": 3, "batch_size": 2, "device": "cpu", "deterministic": True, "logging": {"tensorboard": False},
         "optimizer": {"name": "adamw", "learning_rate": 0.01}, "checkpoints": {"every_n_steps": 4, "total_limit": 4},
         "early_stopping": {"monitor": "val_accuracy", "patience": None},
         "semi_supervised": {"unlabelled_ratio": 3, "confidence_threshold": 0.2}}
LABELLED = 12  # 100 digits: 60 train records; every 5th keeps its label (task_runs.digits_cache)
STEPS = 3 * LABELLED // 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return digits_cache(tmp_path_factory.mktemp("semi-data"), unlabelled_every=5)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache) -> Path:
    folder = tmp_path_factory.mktemp("semi-run")
    train_here(write_request(folder, "semi_supervised", cache, MODEL, TRAIN))
    return folder


# ---------------------------------------------------------------- ingest: which labels stay
def test_ingest_keeps_a_seeded_stratified_share_of_train_labels_and_marks_the_rest(tmp_path):
    from trainflow.stages.ingest_split import ingest_split

    config = {"sklearn_dataset": "digits", "resolution": 8, "labelled_fraction": 0.1, "max_records": 300}
    manifests = []
    for name in ("a", "b"):
        dataset = LocalArtifact(str(tmp_path / name))
        summary = ingest_split(config, 3, dataset, LocalArtifact(str(tmp_path / f"{name}.md")), task="semi_supervised")
        manifests.append((tmp_path / name / "manifest.jsonl").read_text())
    assert manifests[0] == manifests[1]  # seeded: byte for byte
    rows = [json.loads(line) for line in manifests[0].splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    hidden = [row for row in train if row.get("unlabelled")]
    assert all("label" not in row for row in hidden) and summary["num_unlabelled_train"] == len(hidden)
    assert all("label" in row for row in rows if row["split"] != "train")
    kept = Counter(row["label"] for row in train if "label" in row)
    assert sorted(kept) == list(range(10)) and 0.08 < sum(kept.values()) / len(train) < 0.14
    assert "Labels kept on" in (tmp_path / "a.md").read_text()


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=60), fraction=st.floats(0.01, 1.0), seed=st.integers(0, 99))
def test_every_class_keeps_its_share_and_at_least_one_label(labels, fraction, seed):
    records = [IngestRecord(record_id=f"r{i:03d}", sha256=str(i), label=label) for i, label in enumerate(labels)]
    assignment = {r.record_id: "train" if i % 4 else "val" for i, r in enumerate(records)}
    hidden = unlabelled_train_ids(records, assignment, fraction, seed)
    assert hidden == unlabelled_train_ids(records, assignment, fraction, seed)
    train = Counter(r.label for r in records if assignment[r.record_id] == "train")
    kept = Counter(r.label for r in records if assignment[r.record_id] == "train" and r.record_id not in hidden)
    for label, count in train.items():
        assert kept[label] == max(1, round(fraction * count))
    assert all(assignment[i] == "train" for i in hidden)


# ---------------------------------------------------------------- batches and loss
def test_an_epoch_pairs_every_labelled_record_with_distinct_unlabelled_ones(cache):
    split = SupervisedCache(cache, "train")
    labels = split.arrays["labels"]
    labelled, unlabelled = (labels >= 0).nonzero().flatten().tolist(), (labels < 0).nonzero().flatten().tolist()
    batches = PartlyLabelledBatches(split, labelled, unlabelled, 3, seed=0)
    epoch = batches.__getitems__([SampleKey(i, 1, 0) for i in range(len(labelled))]).collated
    assert (epoch["label"] >= 0).all() and epoch["unlabelled_inputs"].shape == (3 * LABELLED, 3, 8, 8)
    assert len({tuple(image.flatten().tolist()) for image in epoch["unlabelled_inputs"]}) == 3 * LABELLED
    again = batches.__getitems__([SampleKey(5, 1, 0)]).collated["unlabelled_inputs"]
    assert torch.equal(again, epoch["unlabelled_inputs"][15:18])  # a record's partners depend on its key alone
    other_epoch = batches.__getitems__([SampleKey(5, 2, 0)]).collated["unlabelled_inputs"]
    assert not torch.equal(other_epoch, again)


def test_pseudo_labels_count_only_above_the_confidence_threshold():
    logits = torch.tensor([[4.0, 0.0], [0.1, 0.0]])
    assert pseudo_label_loss(logits, 0.99) == 0
    confident_only = torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0])) / 2
    assert torch.allclose(pseudo_label_loss(logits, 0.9), confident_only)


# ---------------------------------------------------------------- training
def test_trains_one_epoch_per_pass_over_the_labelled_records(uninterrupted):
    assert [step for step, _ in step_losses(uninterrupted / "checkpoints")] == list(range(1, STEPS + 1))


@pytest.mark.slow  # two training processes: about 30 s on a busy 2-core machine
def test_sigkill_mid_run_then_resume_gives_the_same_per_step_losses(tmp_path, cache, uninterrupted):
    request = write_request(tmp_path, "semi_supervised", cache, MODEL, TRAIN)
    killed = run_driver(request, "--kill-after-step", "9")  # mid second epoch, one step past a checkpoint
    assert killed.returncode == -signal.SIGKILL
    resumed = run_driver(request)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint step-000000008" in resumed.stdout
    assert step_losses(tmp_path / "checkpoints") == step_losses(uninterrupted / "checkpoints")  # bitwise


def test_exported_folder_loads_back_and_predicts(uninterrupted, cache):
    predictor = get_task("semi_supervised").load_for_prediction(uninterrupted / "model")
    probabilities = predictor.predict(torch.rand(4, 3, 8, 8))
    assert probabilities.shape == (4, 10) and torch.allclose(probabilities.sum(1), torch.ones(4))
    outputs, truth = predictor.record_outputs(cache, 16, torch.device("cpu"))
    assert outputs.shape == (20, 10) and (truth >= 0).all()
    with pytest.raises(UserFacingError, match="holds a semi_supervised model, not a classification model"):
        get_task("classification").load_for_prediction(uninterrupted / "model")


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_gloo_ddp_trains_and_exports(tmp_path, cache):
    done = torchrun_driver(write_request(tmp_path, "semi_supervised", cache, MODEL, TRAIN))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "world size 2" in done.stdout
    assert len(step_losses(tmp_path / "checkpoints")) == 3 * (LABELLED // 2 // 2)  # each rank: 6 labelled, batch 2
    predictor = get_task("semi_supervised").load_for_prediction(tmp_path / "model")
    assert predictor.predict(torch.rand(2, 3, 8, 8)).shape == (2, 10)


# ---------------------------------------------------------------- bad inputs: one sentence naming the field
def run_config(task: str = "semi_supervised", **ingest) -> dict:
    return {"run_name": "semi", "task": task, "ingest": {"sklearn_dataset": "digits", "resolution": 8, **ingest},
            "model": {"architecture": "small_cnn"}, "register": {"model_name": "semi"}}


@pytest.mark.parametrize("task, ingest, message", [
    ("semi_supervised", {}, r"ingest\.labelled_fraction: semi_supervised needs the share"),
    ("semi_supervised", {"labelled_fraction": 1}, r"ingest\.labelled_fraction: 1 keeps every label, so there are no unlabelled"),
    ("classification", {"labelled_fraction": 0.1}, r"ingest\.labelled_fraction: task classification trains on labelled records only"),
])
def test_a_config_without_unlabelled_records_names_the_field(task, ingest, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.model_validate(run_config(task, **ingest))


def test_a_cache_without_unlabelled_records_is_one_sentence(tmp_path):
    labelled_only = digits_cache(tmp_path, count=40)
    with pytest.raises(UserFacingError, match="the train split has no unlabelled records") as raised:
        get_task("semi_supervised").training_task(labelled_only, ModelConfig(**MODEL), TrainConfig.model_validate(TRAIN), 0)
    assert "\n" not in str(raised.value)
