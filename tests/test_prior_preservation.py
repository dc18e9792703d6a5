"""Prior preservation (DreamBooth): class images ingested into the train split, mixed into each epoch at a set
ratio (or repeats) with their own loss weight, and per-dataset repeats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from trainflow.artifacts import LocalArtifact
from trainflow.config import DiffusionTrainingConfig, PriorPreservationConfig
from trainflow.data.manifest import read_manifest
from trainflow.data.loading.transforms import SampleKey
from trainflow.data.cache.latent_cache import CachedLatents
from trainflow.diffusion.prior_mix import MixedTrainRecords
from trainflow.errors import ConfigError
from trainflow.stages.build_cache import build_cache
from trainflow.stages.ingest_split import ingest_split
from trainflow.stages.train import train
from trainflow.tasks.text_to_image_training import TextToImageTask
from trainflow.training.batch_plan import EpochPlan
from trainflow.training.distributed import ProcessInfo

CLASS_CAPTION = "a handwritten digit"


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def class_images(tmp_path_factory, digits_dir) -> Path:
    """12 other digits, captioned with the class prompt only (what a base model would be asked for)."""
    root = tmp_path_factory.mktemp("class") / "class-images"
    (root / "images").mkdir(parents=True)
    rows = [json.loads(line) for line in (digits_dir / "metadata.jsonl").read_text().splitlines()[500:512]]
    for row in rows:
        (root / row["file_name"]).write_bytes((digits_dir / row["file_name"]).read_bytes())
    (root / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": r["file_name"], "text": CLASS_CAPTION})
                                                   for r in rows) + "\n")
    return root


@pytest.fixture(scope="module")
def prior_data(tmp_path_factory, digits_dir, class_images, tiny_base_model) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("prior")
    dataset, report = LocalArtifact(str(tmp / "dataset")), LocalArtifact(str(tmp / "report.md"))
    summary = ingest_split({"dataset_dir": str(digits_dir), "resolution": 32, "label_column": "label", "max_records": 20,
                            "prior_preservation": {"dataset_dir": str(class_images)}}, 0, dataset, report, task="text_to_image")
    assert summary["num_prior"] == 12 and summary["num_records"] == 20
    cache = LocalArtifact(str(tmp / "cache"))
    build_cache(dataset.path, {"base": str(tiny_base_model)}, {"batch_size": 32, "storage_dtype": "float32"}, cache, task="text_to_image")
    return {"dataset": Path(dataset.path), "report": Path(report.path), "cache": Path(cache.path), "tmp": tmp}


def test_class_images_join_the_train_split_only_and_are_named_apart(prior_data):
    entries = read_manifest(prior_data["dataset"])
    priors = [e for e in entries if e.prior]
    assert len(priors) == 12 and all(e.split == "train" and e.record_id.startswith("prior/") for e in priors)
    assert all(e.caption == CLASS_CAPTION and e.image.startswith("images/prior/") for e in priors)
    assert not any(e.prior for e in entries if e.split != "train")
    assert "Class images (prior preservation)" in prior_data["report"].read_text()
    train = CachedLatents(prior_data["cache"], "train")
    assert train.prior_flags is not None and int(train.prior_flags.sum()) == 12


def test_the_ratio_sets_each_epochs_share_of_class_images_and_repeats_multiply_instances(prior_data):
    records = CachedLatents(prior_data["cache"], "train")
    instances = int((~records.prior_flags).sum())
    half = MixedTrainRecords(records, 1, PriorPreservationConfig(ratio=0.5), seed=0)
    assert len(half) == 2 * instances
    doubled = MixedTrainRecords(records, 2, PriorPreservationConfig(ratio=0.2), seed=0)
    assert doubled.instance_slots == 2 * instances and len(doubled) - doubled.instance_slots == round(0.25 * 2 * instances)
    natural = MixedTrainRecords(records, 1, PriorPreservationConfig(repeats=3), seed=0)
    assert len(natural) == instances + 36
    plan = EpochPlan(half, ProcessInfo(), seed=0, records_per_step=2)
    for epoch in (0, 1):
        drawn = [half[SampleKey(i, epoch, 0)] for i in plan.indices(epoch)]
        assert sum(bool(item["prior"]) for item in drawn) == instances, "half of the epoch are class images"


def test_class_slots_walk_through_every_class_image_over_epochs_and_keep_their_bucket():
    class FakeRecords:
        """12 instance and 9 class records in 2 buckets (class images: 6 in bucket 0, 3 in bucket 1)."""

        takes_sample_keys = False
        bucket_ids = np.array([0] * 6 + [1] * 6 + [0] * 6 + [1] * 3)
        prior_flags = np.array([False] * 12 + [True] * 9)
        bucket_sizes = [(32, 32), (24, 40)]

        def __len__(self):
            return len(self.bucket_ids)

        def __getitem__(self, index):
            return {"index": torch.tensor(index), "bucket": torch.tensor(int(self.bucket_ids[index]))}

    mixed = MixedTrainRecords(FakeRecords(), 1, PriorPreservationConfig(ratio=0.25), seed=3)  # 4 class slots of 9
    assert len(mixed) == 16
    used: set[int] = set()
    for epoch in range(6):
        for slot in range(12, 16):
            item = mixed[SampleKey(slot, epoch, 0)]
            assert bool(item["prior"]) and int(item["bucket"]) == mixed.bucket_ids[slot], "a slot keeps its bucket"
            used.add(int(item["index"]))
    assert used == set(range(12, 21)), "every class image is drawn within a few epochs"
    assert [int(mixed[SampleKey(s, 0, 0)]["index"]) for s in range(12)] == list(range(12))


def test_class_images_weigh_their_loss_weight(prior_data, tiny_base_model):
    records = CachedLatents(prior_data["cache"], "train")
    classes = [i for i in range(len(records)) if records.prior_flags[i]][:4]
    batch = default_collate([records[i] for i in classes])
    assert bool(batch["prior"].all())
    losses = {}
    for weight in (0.0, 1.0, 2.5):
        task = TextToImageTask(tiny_base_model, prior_data["cache"],
                               DiffusionTrainingConfig(prior_preservation={"loss_weight": weight}), seed=0)
        torch.manual_seed(0)
        model = task.build_model()
        torch.manual_seed(1)
        losses[weight] = float(task.training_step(model, batch).detach())
    assert losses[0.0] == 0.0 and losses[2.5] == pytest.approx(2.5 * losses[1.0], rel=1e-6)


def test_training_with_class_images_runs_and_asking_for_them_without_any_names_the_field(prior_data, tiny_base_model,
                                                                                         tmp_path, digits_dir):
    config = {"max_epochs": 1, "batch_size": 4, "device": "cpu", "mixed_precision": "no", "schedule": {"name": "constant"},
              "logging": {"tensorboard": False},
              "diffusion": {"repeats": 2, "prior_preservation": {"ratio": 0.5, "loss_weight": 0.5}}}
    model, metrics = LocalArtifact(str(tmp_path / "model")), LocalArtifact(str(tmp_path / "metrics"))
    summary = train("text_to_image", str(prior_data["cache"]), {"base": str(tiny_base_model)}, config, 0, model, metrics,
                    checkpoint_dir=str(tmp_path / "checkpoints"))
    instances = int((~CachedLatents(prior_data["cache"], "train").prior_flags).sum())
    assert summary["steps_run"] == (2 * instances * 2) // 4, "instance draws doubled, as many class draws"

    plain_dataset, plain_cache = LocalArtifact(str(tmp_path / "d")), LocalArtifact(str(tmp_path / "c"))
    ingest_split({"dataset_dir": str(digits_dir), "resolution": 32, "max_records": 20}, 0, plain_dataset,
                 LocalArtifact(str(tmp_path / "r.md")), task="text_to_image")
    build_cache(plain_dataset.path, {"base": str(tiny_base_model)}, {"batch_size": 32, "storage_dtype": "float32"},
                plain_cache, task="text_to_image")
    with pytest.raises(ConfigError, match=r"^train\.diffusion\.prior_preservation: the cache holds no class images"):
        train("text_to_image", plain_cache.path, {"base": str(tiny_base_model)}, config, 0,
              LocalArtifact(str(tmp_path / "m2")), LocalArtifact(str(tmp_path / "x2")),
              checkpoint_dir=str(tmp_path / "checkpoints2"))


def test_a_missing_class_image_folder_is_named_when_the_config_is_loaded(digits_dir, tiny_base_model, tmp_path):
    import yaml

    from trainflow.config import load_config

    config = {"run_name": "r", "ingest": {"dataset_dir": str(digits_dir),
                                          "prior_preservation": {"dataset_dir": str(tmp_path / "no-such-folder")}},
              "model": {"base": str(tiny_base_model)}, "register": {"model_name": "m", "experiment": "e", "gates": []}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"ingest\.prior_preservation\.dataset_dir: path .*no-such-folder' does not exist"):
        load_config(tmp_path / "run.yaml")
