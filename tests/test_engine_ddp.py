"""DDP under torchrun (2 processes, gloo, CPU): the same training as one process, rank-0-only writes, PET_* launch.

Every test starts torchrun (python -m torch.distributed.run), so each takes tens
of seconds on a 2-core machine: all are marked slow and distributed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))

from engine_tasks import WineTask  # noqa: E402
from trainflow.config import TrainConfig  # noqa: E402
from trainflow.config.training import SCHEDULES  # noqa: E402
from trainflow.training.engine import Trainer  # noqa: E402
from trainflow.training.run_identity import RunIdentity, trainable_state  # noqa: E402
from trainflow.training.training_log import read_step_log  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

DRIVER = Path(__file__).parent / "engine_driver.py"
VAL_RECORDS = 178 - 120  # wine has 178 records; WineTask trains on 120
CONFIG = {
    "max_epochs": 2, "batch_size": 4, "gradient_accumulation": 2, "device": "cpu", "deterministic": True,
    "optimizer": {"name": "adamw", "learning_rate": 0.01}, "schedule": {"name": "cosine", "warmup_steps": 3},
    "checkpoints": {"every_n_steps": 4}, "validation": {"every_n_steps": 5, "every_epoch": True},
    "early_stopping": {"monitor": "val_loss", "patience": None}, "logging": {"tensorboard": False},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*args: str, launcher_flags: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    flags = ["--nproc-per-node", "2", "--master-port", str(free_port())] if launcher_flags else []
    clean = {k: v for k, v in os.environ.items()
             if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("PET_")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *flags, *args], capture_output=True, text=True,
                          timeout=600, env={**clean, **(env or {})})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def rank_facts(folder: Path, rank: int) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((folder / f"rank{rank}.json").read_text()), load_file(str(folder / f"rank{rank}.safetensors"))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """One 2-rank run of CONFIG; rank 1 is given its own checkpoint folder, which must stay empty."""
    root = tmp_path_factory.mktemp("two-ranks")
    torchrun(str(DRIVER), str(root / "checkpoints"), json.dumps(CONFIG), "--outcome", str(root / "outcome.json"),
             "--rank-facts", str(root / "facts"), "--task-options", json.dumps({"draw_random": True}),
             "--separate-dirs-for-other-ranks")
    return root


def micro_batches_of(calls: list[dict], accumulation: int) -> list[list[list[int]]]:
    """Record indices per optimizer step, per micro-batch."""
    return [[call["indices"] for call in calls[i : i + accumulation]] for i in range(0, len(calls), accumulation)]


def test_two_ranks_match_one_process_at_double_micro_batch(two_ranks, tmp_path):
    single_cfg = TrainConfig.model_validate({**CONFIG, "batch_size": 2 * CONFIG["batch_size"]})
    task = WineTask(draw_random=True)
    identity = RunIdentity.build("classification", 0, {}, single_cfg.model_dump(mode="json"), "wine")
    single = Trainer(task, single_cfg, tmp_path / "single", 0, identity)
    single_outcome = single.fit()
    ranks = [rank_facts(two_ranks / "facts", rank) for rank in (0, 1)]

    # DistributedSampler deals one shuffled list round-robin, so rank 0's and rank 1's micro-batch i of a step
    # together hold exactly the single process's micro-batch i (in another order).
    single_steps = micro_batches_of(task.calls, 2)
    rank_steps = [micro_batches_of(facts["calls"], 2) for facts, _ in ranks]
    assert len(single_steps) == len(rank_steps[0]) == len(rank_steps[1]) == 14  # 120 // 16 = 7 steps × 2 epochs
    for step, single_micro in enumerate(single_steps):
        for index, records in enumerate(single_micro):
            ours = rank_steps[0][step][index] + rank_steps[1][step][index]
            assert sorted(ours) == sorted(records), f"step {step + 1}, micro-batch {index}"
            assert not set(rank_steps[0][step][index]) & set(rank_steps[1][step][index])

    distributed, alone = read_step_log(two_ranks / "checkpoints"), read_step_log(tmp_path / "single")
    assert [r["step"] for r in distributed] == [r["step"] for r in alone] == list(range(1, 15))
    assert [r["loss"] for r in distributed] == pytest.approx([r["loss"] for r in alone], rel=1e-5, abs=1e-6)
    assert [r["lr"] for r in distributed] == [r["lr"] for r in alone]
    outcome = json.loads((two_ranks / "outcome.json").read_text())
    assert outcome["world_size"] == 2 and outcome["effective_batch"] == single_outcome.effective_batch == 16
    assert [h["val_loss"] for h in outcome["history"]] == pytest.approx([h["val_loss"] for h in single_outcome.history], rel=1e-5)
    assert [h["val_accuracy"] for h in outcome["history"]] == [h["val_accuracy"] for h in single_outcome.history]

    single_weights = trainable_state(single.accelerator.unwrap_model(single.model))
    (_, rank0_weights), (_, rank1_weights) = ranks
    assert rank0_weights.keys() == single_weights.keys()
    for name, value in rank0_weights.items():
        assert torch.equal(value, rank1_weights[name]), f"{name} differs between the ranks"
        torch.testing.assert_close(value, single_weights[name], rtol=1e-5, atol=1e-6)


def test_only_rank_zero_writes_metrics_cover_the_whole_val_set_and_each_rank_draws_its_own_numbers(two_ranks):
    (rank0, _), (rank1, _) = rank_facts(two_ranks / "facts", 0), rank_facts(two_ranks / "facts", 1)
    assert (rank0["rank"], rank0["world_size"], rank1["rank"], rank1["world_size"]) == (0, 2, 1, 2)

    rank0_dir, rank1_dir = Path(rank0["checkpoint_dir"]), Path(rank1["checkpoint_dir"])
    assert sorted(p.name for p in rank0_dir.glob("step-*")) and (rank0_dir / "training_log.jsonl").is_file()
    assert not rank1_dir.exists(), f"rank 1 wrote {sorted(p.name for p in rank1_dir.rglob('*'))}"

    # Validations at steps 5, 7 (epoch end), 10 and 14: each rank sees the summed count of both shares.
    assert rank0["validation_counts"] == rank1["validation_counts"] == [float(VAL_RECORDS)] * 4

    draws = [[call["random"] for call in facts["calls"]] for facts in (rank0, rank1)]
    assert len(draws[0]) == len(draws[1]) == 28
    assert not set(draws[0]) & set(draws[1]), "the ranks share a random stream"


def test_plain_torchrun_takes_its_settings_from_the_kubeflow_pet_variables(tmp_path):
    port = str(free_port())
    env = {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "127.0.0.1",
           "PET_MASTER_PORT": port}
    # 121 training records leave an odd val set (57): the ranks' shares differ in size and must still add up.
    torchrun(str(DRIVER), str(tmp_path / "checkpoints"), json.dumps(CONFIG), "--outcome", str(tmp_path / "outcome.json"),
             "--rank-facts", str(tmp_path / "facts"), "--task-options", json.dumps({"train_records": 121}),
             launcher_flags=False, env=env)
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert (outcome["world_size"], outcome["effective_batch"], outcome["steps_run"]) == (2, 16, 14)
    for rank in (0, 1):
        facts, _ = rank_facts(tmp_path / "facts", rank)
        assert (facts["rank"], facts["world_size"], facts["master_port"]) == (rank, 2, port)
        assert facts["validation_counts"] == [float(178 - 121)] * 4
    assert [r["step"] for r in read_step_log(tmp_path / "checkpoints")] == list(range(1, 15))


def test_out_of_memory_on_one_rank_makes_every_rank_halve_its_micro_batch_and_retry_the_same_records(tmp_path):
    # Rank 1 alone fails its first micro-batch of step 3 (call 5); rank 0 ran that micro-batch fine and learns of
    # the failure from the flag exchanged before the gradient-synchronising micro-batch.
    torchrun(str(DRIVER), str(tmp_path / "checkpoints"), json.dumps({**CONFIG, "max_epochs": 1}),
             "--outcome", str(tmp_path / "outcome.json"), "--rank-facts", str(tmp_path / "facts"),
             "--task-options", json.dumps({"fail_when_batch_larger_than": 2, "oom_after_calls": 4, "oom_only_on_rank": 1}))
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert (outcome["steps_run"], outcome["micro_batch"], outcome["gradient_accumulation"]) == (7, 2, 4)
    assert outcome["effective_batch"] == 16
    for rank in (0, 1):
        calls = rank_facts(tmp_path / "facts", rank)[0]["calls"]
        assert [len(call["indices"]) for call in calls[:5]] == [4] * 5
        assert [call["event"] for call in calls[:5]] == ["ok"] * 4 + ["oom" if rank == 1 else "ok"]
        retried = calls[5]["indices"] + calls[6]["indices"]
        assert retried == calls[4]["indices"], f"rank {rank} did not retry step 3 from its first record"
        assert {len(call["indices"]) for call in calls[5:]} == {2} and len(calls) == 5 + (7 - 2) * 4
    assert [r["step"] for r in read_step_log(tmp_path / "checkpoints")] == list(range(1, 8))


def library_learning_rates(name: str, base_lr: float, total_steps: int, warmup: int) -> list[float]:
    """The learning rate after each of `total_steps` steps, from the library alone."""
    from torch.optim.lr_scheduler import OneCycleLR, StepLR
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    if name == "one_cycle":
        schedule = OneCycleLR(optimizer, max_lr=base_lr, total_steps=total_steps, pct_start=0.3)
    elif name == "step":
        schedule = StepLR(optimizer, step_size=5, gamma=0.5)
    else:
        specific = {"cosine_with_restarts": {"num_cycles": 2}, "polynomial": {"power": 2.0, "lr_end": 1e-4}}.get(name, {})
        schedule = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                                 scheduler_specific_kwargs=specific)
    rates = []
    for _ in range(total_steps):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_every_schedule_follows_the_library_in_optimizer_steps_with_accumulation_and_two_ranks(tmp_path):
    names = [name for name in SCHEDULES if name != "reduce_on_plateau"]  # that one: tests/test_engine_rules.py
    base = {"max_epochs": 3, "batch_size": 4, "gradient_accumulation": 2, "device": "cpu",
            "optimizer": {"name": "adamw", "learning_rate": 0.01}, "early_stopping": {"monitor": "val_loss", "patience": None},
            "logging": {"tensorboard": False}}
    specific = {"cosine_with_restarts": {"num_cycles": 2.0}, "polynomial": {"power": 2.0, "lr_end": 1e-4},
                "step": {"step_size": 5, "gamma": 0.5}, "one_cycle": {"pct_start": 0.3}}
    configs = [{**base, "schedule": {"name": name, "warmup_steps": 0 if name in ("one_cycle", "step", "constant") else 3,
                                     **specific.get(name, {})}} for name in names]
    torchrun(str(DRIVER), str(tmp_path), json.dumps(configs))

    records_per_rank = math.ceil(120 / 2)
    total_steps = records_per_rank // (4 * 2) * 3
    assert total_steps == 21  # 60 // 8 = 7 steps per epoch: the tail of 4 records is dropped
    for index, name in enumerate(names):
        log = read_step_log(tmp_path / f"run-{index}")
        assert [r["step"] for r in log] == list(range(1, total_steps + 1)), name
        expected = library_learning_rates(name, 0.01, total_steps, configs[index]["schedule"]["warmup_steps"])
        assert [r["lr"] for r in log] == pytest.approx(expected, rel=1e-12, abs=1e-15), name
    assert len({tuple(library_learning_rates(n, 0.01, 21, 3)) for n in names}) == len(names), "schedules must differ"


def test_train_worker_under_torchrun_trains_a_supervised_cache_and_rank_zero_exports_the_best(tmp_path):
    from trainflow.artifacts import LocalArtifact
    from trainflow.models.model_folder import load_model_folder
    from trainflow.stages.build_cache import build_cache
    from trainflow.stages.ingest_split import ingest_split

    dataset = LocalArtifact(str(tmp_path / "dataset"))
    ingest_split({"sklearn_dataset": "iris"}, 0, dataset, LocalArtifact(str(tmp_path / "report.md")), task="classification")
    cache = LocalArtifact(str(tmp_path / "cache"))
    build_cache(dataset.path, {"architecture": "mlp"}, {}, cache, task="classification")
    request = {
        "task": "classification", "cache_dir": cache.path, "model_config": {"architecture": "mlp", "hidden_sizes": [16]},
        "train_config": {"max_epochs": 3, "batch_size": 8, "gradient_accumulation": 2, "device": "cpu",
                         "optimizer": {"learning_rate": 0.01}, "logging": {"tensorboard": False},
                         "early_stopping": {"monitor": "val_accuracy", "patience": None}},
        "seed": 0, "checkpoint_dir": str(tmp_path / "checkpoints"), "output_dir": str(tmp_path / "model"),
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = torchrun("-m", "trainflow", "train-worker", "--request", str(tmp_path / "request.json"))

    record = json.loads((tmp_path / "model" / "trainflow_training.json").read_text())
    train_records = cache.metadata["num_train"]
    steps = math.ceil(train_records / 2) // 16 * 3
    assert (record["world_size"], record["effective_batch"], record["steps_run"]) == (2, 32, steps)
    assert "effective batch 32 = micro-batch 8 × accumulation 2 × world size 2" in done.stdout
    assert done.stdout.count("train: reached train.max_epochs (3)") == 1  # rank 0 alone reports
    assert [r["step"] for r in read_step_log(tmp_path / "checkpoints")] == list(range(1, steps + 1))

    best = load_file(str(Path(record["best_checkpoint"]) / "model.safetensors"))
    model, _ = load_model_folder(tmp_path / "model")
    exported = model.state_dict()
    for name, value in best.items():
        assert torch.equal(exported[name], value), f"{name} is not the best checkpoint's"


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step_and_the_resumed_run_matches(two_ranks, tmp_path):
    """Only rank 1 is signalled (as when one pod of a job is evicted first); the stop flag travels in the loss
    all-reduce, so rank 0 stops after the same step, and rank 0's checkpoint holds both ranks' RNG states."""
    folder, pids = tmp_path / "checkpoints", tmp_path / "pids"
    args = [str(DRIVER), str(folder), json.dumps(CONFIG), "--task-options", json.dumps({"draw_random": True})]
    clean = {k: v for k, v in os.environ.items()
             if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("PET_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
         *args, "--sleep-per-step", "0.1", "--pid-dir", str(pids)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_step_log(folder)) < 5 and process.poll() is None:
        time.sleep(0.02)
    os.kill(int((pids / "rank1.pid").read_text()), signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0, output  # torchrun reports its workers' exit code 143 as a failure
    stops = [json.loads((pids / f"rank{rank}-preempted.json").read_text())["step"] for rank in (0, 1)]
    assert stops[0] == stops[1], output
    stopped = stops[0]
    assert 5 <= stopped < 14, output
    assert "train: SIGTERM received (rank 1)" in output and "SIGTERM received (rank 0)" not in output
    assert f"train: stopped on SIGTERM after step {stopped}; checkpoint step-{stopped:09d} written" in output
    assert max(p.name for p in folder.glob("step-*")) == f"step-{stopped:09d}"

    done = torchrun(*args)
    assert f"train: resuming from checkpoint step-{stopped:09d}" in done.stdout
    resumed, uninterrupted = read_step_log(folder), read_step_log(two_ranks / "checkpoints")
    assert [(r["step"], r["loss"]) for r in resumed] == [(r["step"], r["loss"]) for r in uninterrupted]


def test_two_ranks_with_buckets_draw_each_step_from_one_bucket_and_each_record_at_most_once_per_epoch(tmp_path):
    from trainflow.training.bucketed_batches import bucketed_steps_per_epoch

    torchrun(str(DRIVER), str(tmp_path / "checkpoints"), json.dumps(CONFIG), "--outcome", str(tmp_path / "outcome.json"),
             "--rank-facts", str(tmp_path / "facts"), "--task-options", json.dumps({"buckets_by_label": True}))
    bucket_of = WineTask(buckets_by_label=True).train.bucket_ids
    steps_per_epoch = bucketed_steps_per_epoch(bucket_of, 4 * 2, 2)  # micro-batch 4 × accumulation 2, 2 ranks
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["steps_run"] == 2 * steps_per_epoch
    sizes = [int((bucket_of == b).sum()) for b in range(3)]
    full_steps = [size // 16 * 16 for size in sizes]  # records in whole global steps; tails wait for another epoch
    assert sum(full_steps) == steps_per_epoch * 16 and sum(full_steps) < 120, "some bucket has a tail to drop"
    ranks = [micro_batches_of(rank_facts(tmp_path / "facts", rank)[0]["calls"], 2) for rank in (0, 1)]
    for epoch in range(2):
        seen: list[int] = []
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            records = [i for rank in ranks for micro in rank[step] for i in micro]
            assert len({int(bucket_of[i]) for i in records}) == 1, f"step {step + 1} mixes buckets"
            seen += records
        assert len(seen) == len(set(seen)) == sum(full_steps), f"epoch {epoch + 1}: a record was drawn twice"
        per_bucket = [sum(1 for i in seen if bucket_of[i] == b) for b in range(3)]
        assert per_bucket == full_steps
    first_epoch = [i for rank in ranks for step in rank[:steps_per_epoch] for micro in step for i in micro]
    second_epoch = [i for rank in ranks for step in rank[steps_per_epoch:] for micro in step for i in micro]
    assert first_epoch != second_epoch, "each epoch reshuffles"
