"""text_classification: a table of texts -> token cache -> transformers encoder + head -> metrics beside TF-IDF.

A tiny BERT built from a config (a WordPiece tokenizer trained on the train split) trains in seconds on a small
table of three topics; the slow tests resume it after SIGKILL and run it under 2-process gloo DDP.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainflow.artifacts import LocalArtifact
from trainflow.config import IngestConfig, check_task_fit, load_config
from trainflow.data.checks.image_decoding import ImageLimits
from trainflow.data.checks.quarantine import RejectedRecord
from trainflow.data.checks.record_validation import CandidateRecord, IngestRecord, RecordRules, validate_record
from trainflow.errors import ConfigError, UserFacingError
from trainflow.stages.build_cache import build_cache
from trainflow.stages.ingest_split import ingest_split
from trainflow.tasks import get_task
from trainflow.training.run_training import TrainRequest
from trainflow.training.training_log import read_step_log

TOPICS = {
    "weather": "rain cloud storm wind sunny forecast snow thunder humid breeze",
    "cooking": "bake oven flour sugar simmer recipe garlic roast whisk butter",
    "sports": "goal match referee striker league score tennis coach sprint medal",
}
SHARED = "the a of and today very with some more".split()
MODEL = {"text_encoder": {"max_length": 16, "vocab_size": 300, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
                          "intermediate_size": 32, "length_buckets": 2}, "dropout": 0.1}
TRAIN = {"max_epochs": 3, "batch_size": 8, "device": "cpu", "deterministic": True, "logging": {"tensorboard": False},
         "optimizer": {"learning_rate": 0.01, "module_learning_rates": {"encoder": 0.005, "head": 0.02}},
         "checkpoints": {"every_n_steps": 3}, "early_stopping": {"monitor": "val_accuracy", "patience": None}}


def topic_rows(count: int = 120) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for index in range(count):
        label = list(TOPICS)[index % 3]
        words = [rng.choice(TOPICS[label].split() if rng.random() < 0.6 else SHARED) for _ in range(rng.randint(3, 10))]
        rows.append({"id": f"r{index:03d}", "text": " ".join(words), "topic": label})
    rows[0]["text"] = " ".join(["rain"] * 40)  # longer than max_length: truncated with a warning count
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


INGEST = {"text_column": "text", "label_column": "topic", "id_column": "id"}


@pytest.fixture(scope="module")
def topic_cache(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(dataset folder, cache folder, cache metadata) of the topic table, with two bad rows quarantined."""
    root = tmp_path_factory.mktemp("topics")
    table = root / "topics.csv"
    with table.open("w", encoding="utf-8", newline="") as handle:
        handle.write("id,text,topic\n")
        for row in topic_rows():
            handle.write(f"{row['id']},{row['text']},{row['topic']}\n")
        handle.write("bad1,   ,weather\n")
    with table.open("ab") as handle:
        handle.write(b"bad2,caf\xe9 au lait,cooking\n")  # latin-1, not UTF-8: does not decode
    dataset, cache = LocalArtifact(str(root / "dataset")), LocalArtifact(str(root / "cache"))
    ingest_split({"table": str(table), **INGEST}, 0, dataset, LocalArtifact(str(root / "ingest.md")), task="text_classification")
    build_cache(dataset.path, MODEL, {}, cache, task="text_classification")
    return Path(dataset.path), Path(cache.path), dict(cache.metadata)


def request(cache: Path, root: Path, **train) -> dict:
    return {"task": "text_classification", "cache_dir": str(cache), "model_config": MODEL, "train_config": {**TRAIN, **train},
            "seed": 0, "checkpoint_dir": str(root / "checkpoints"), "output_dir": str(root / "model")}


def test_bad_rows_go_to_quarantine_with_a_reason_and_long_texts_are_truncated_with_a_count(topic_cache):
    dataset, _, metadata = topic_cache
    rejected = {row["ref"]: row for row in map(json.loads, (dataset / "rejected.jsonl").read_text().splitlines())}
    assert {r["rule"] for r in rejected.values()} == {"text_empty", "text_not_text"}
    assert "text column 'text' is empty" in " ".join(r["reason"] for r in rejected.values())
    assert metadata["num_truncated"] == 1 and metadata["num_train"] + metadata["num_val"] + metadata["num_test"] == 120


def test_tiny_encoder_trains_exports_and_the_folder_predicts_what_evaluation_scored(topic_cache, tmp_path):
    from trainflow.stages.evaluate import evaluate
    from trainflow.training.run_training import train_and_export

    _, cache, _ = topic_cache
    spec = TrainRequest.model_validate(request(cache, tmp_path))
    definition = get_task("text_classification")
    from trainflow.config import ModelConfig, TrainConfig

    task = definition.training_task(cache, ModelConfig.model_validate(MODEL), TrainConfig.model_validate(spec.train_config), 0)
    from trainflow.training.optimizers import parameter_groups

    train_cfg = TrainConfig.model_validate(spec.train_config)
    groups = parameter_groups(task.build_model(), train_cfg.optimizer, task.learning_rates())
    rates = {group["lr"]: {name.split(".")[0] for name in group["param_names"]} for group in groups}
    assert rates == {0.005: {"encoder"}, 0.02: {"head"}}  # per-module learning rates through the parameter groups
    buckets = task.train_dataset().bucket_ids  # length_buckets 2: short and long texts, about half each
    assert sorted(set(buckets)) == [0, 1] and min(buckets.count(0), buckets.count(1)) > len(buckets) // 3
    summary = train_and_export(task, spec, train_cfg, ModelConfig.model_validate(MODEL))
    assert summary["best_value"] > 0.6  # three topics: chance is 1/3
    results = evaluate(str(cache), str(tmp_path / "model"), MODEL, {"bootstrap_resamples": 50}, 0,
                       LocalArtifact(str(tmp_path / "metrics.json")), task="text_classification",
                       predictions=LocalArtifact(str(tmp_path / "predictions")))
    for key in ("accuracy", "f1_macro", "accuracy_ci_low", "f1_macro_ci_high", "baseline_tfidf_accuracy", "baseline_tfidf_f1_macro"):
        assert isinstance(results[key], float), key
    assert results["accuracy_ci_low"] <= results["accuracy"] <= results["accuracy_ci_high"]

    predictor = definition.load_for_prediction(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model" / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    from trainflow.tasks.text_classification_cache import split_texts

    texts, labels = split_texts(cache, "test")
    from_texts = predictor.predict(texts)
    from_cache, truth = predictor.record_outputs(cache, 16, torch.device("cpu"))
    assert torch.equal(truth, torch.from_numpy(labels))
    torch.testing.assert_close(from_texts.double(), from_cache, atol=1e-5, rtol=0)  # padding never changes a prediction
    assert predictor.names == ["cooking", "sports", "weather"]
    assert predictor.predict("storm wind rain thunder").argmax().item() == predictor.names.index("weather")


def test_a_task_that_does_not_fit_its_data_or_model_is_one_sentence_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"ingest\.dataset_dir: text_classification reads a table of texts"):
        check_task_fit("text_classification", IngestConfig(dataset_dir=str(tmp_path)), None, None)
    with pytest.raises(ConfigError, match=r"ingest\.text_column: text_classification needs"):
        check_task_fit("text_classification", IngestConfig(table="t.csv", label_column="y"), None, None)
    with pytest.raises(ConfigError, match=r"ingest\.text_column: a table of texts trains with task: text_classification"):
        check_task_fit("classification", IngestConfig(table="t.csv", label_column="y", text_column="x"), None, None)
    table = write_jsonl(tmp_path / "t.jsonl", [{"body": "some words here", "topic": "a"}] * 3)
    with pytest.raises(UserFacingError, match=r"has no column 'text'"):
        ingest_split({"table": str(table), **INGEST, "id_column": None}, 0, LocalArtifact(str(tmp_path / "d")),
                     LocalArtifact(str(tmp_path / "r.md")), task="text_classification")


def test_a_tokenizer_folder_of_another_model_is_refused_when_the_config_loads(tmp_path):
    from transformers import BertConfig, BertModel

    from trainflow.tasks.text_classification_tokenizers import train_wordpiece

    BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         max_position_embeddings=32)).save_pretrained(tmp_path / "encoder")
    train_wordpiece([row["text"] for row in topic_rows()], 300, 16).save_pretrained(tmp_path / "tokenizer")
    table = write_jsonl(tmp_path / "t.jsonl", topic_rows(6))
    config = tmp_path / "run.yaml"
    encoder = {"pretrained": str(tmp_path / "encoder"), "tokenizer": str(tmp_path / "tokenizer"), "max_length": 16}
    config.write_text(json.dumps({"run_name": "t", "task": "text_classification", "ingest": {"table": str(table), **INGEST},
                                  "model": {"text_encoder": encoder}, "register": {"model_name": "t"}}))
    with pytest.raises(ConfigError, match=r"model\.text_encoder\.tokenizer: the tokenizer has \d+ tokens but the encoder .* embeds 30"):
        load_config(config)
    config.write_text(config.read_text().replace('"max_length": 16', '"max_length": 64'))
    with pytest.raises(ConfigError, match=r"model\.text_encoder\.max_length: 64 tokens, but the encoder .* reads at most 32"):
        load_config(config)


RULES = RecordRules(required=frozenset({"caption", "label"}), kind="text", limits=ImageLimits(max_pixels=64, min_size=1), class_names=("a", "b"),
                    labels_are_names=True, label_column="topic")


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.text(), st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text(), max_size=2)))
def test_any_text_cell_becomes_a_record_with_text_or_a_rejection_with_a_reason(value):
    outcome = validate_record(CandidateRecord(source="t.jsonl:1", ref="t.jsonl:1", default_id="t.jsonl:1", caption=value,
                                              label="a"), RULES)
    if isinstance(outcome, IngestRecord):
        assert isinstance(value, str) and outcome.caption == value.strip() and outcome.caption
    else:
        assert isinstance(outcome, RejectedRecord) and outcome.rule in {"text_missing", "text_not_text", "text_empty"}


# ---------------------------------------------------------------- slow: resume after SIGKILL, DDP
DRIVER = Path(__file__).parent / "text_classification_driver.py"


def losses(folder: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_step_log(folder)]


def run_driver(spec: dict, folder: Path, pause: float) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "request.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, str(DRIVER), str(folder / "request.json"), str(pause)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # three training processes (two at once, one slowed to land the kill): ~60 s on a loaded 2-core machine
def test_sigkill_mid_run_then_resume_gives_the_same_per_step_losses_bit_for_bit(topic_cache, tmp_path):
    _, cache, metadata = topic_cache
    per_epoch = metadata["num_train"] // TRAIN["batch_size"]
    killed = tmp_path / "killed"
    complete = run_driver(request(cache, tmp_path / "complete"), tmp_path / "complete", 0.0)
    process = run_driver(request(cache, killed), killed, 0.1)
    deadline = time.time() + 240
    while time.time() < deadline and len(losses(killed / "checkpoints")) < per_epoch + 2:  # inside epoch 2 of 3
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    output, _ = complete.communicate(timeout=300)
    assert complete.returncode == 0, output
    uninterrupted = losses(tmp_path / "complete" / "checkpoints")
    assert per_epoch < len(losses(killed / "checkpoints")) < len(uninterrupted) == 3 * per_epoch, "the kill must land mid-run"
    resumed = run_driver(request(cache, killed), killed, 0.0)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resuming from checkpoint step-" in output
    assert losses(killed / "checkpoints") == uninterrupted  # floats compared exactly


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_ranks_train_the_text_classifier_and_rank_zero_exports_a_folder_that_predicts(topic_cache, tmp_path):
    from safetensors.torch import load_file

    _, cache, _ = topic_cache
    (tmp_path / "request.json").write_text(json.dumps(request(cache, tmp_path, batch_size=4)))
    clean = {k: v for k, v in os.environ.items()
             if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("PET_")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()), "-m", "trainflow", "train-worker", "--request", str(tmp_path / "request.json")],
                          capture_output=True, text=True, timeout=600, env={**clean, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "model" / "trainflow_training.json").read_text())
    assert (record["world_size"], record["effective_batch"]) == (2, 8)
    assert done.stdout.count("train: reached train.max_epochs (3)") == 1  # rank 0 alone reports
    predictor = get_task("text_classification").load_for_prediction(tmp_path / "model")
    best = load_file(str(Path(record["best_checkpoint"]) / "model.safetensors"))
    exported = predictor.model.state_dict()
    for name, value in best.items():
        assert torch.equal(exported[name], value), f"{name} is not the best checkpoint's"
    assert predictor.predict(["goal match striker", "bake flour sugar"]).shape == (2, 3)
