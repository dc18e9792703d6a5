"""`trainflow weights check/fetch`: every weight file a config needs, where it is expected, and fetching it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from trainflow.config import RunConfig
from trainflow.commands import weights as wi


def _config(tmp_path, **score) -> RunConfig:
    payload = {
        "run_name": "w", "task": "text_to_image", "ingest": {"dataset_dir": str(tmp_path)},
        "model": {"base": "org/tiny-sd"},
        "score": {"clip_model": "openai/clip-vit-base-patch16", "lpips": True, **score},
        "register": {"model_name": "m", "experiment": "e"},
    }
    return RunConfig.model_validate(payload), payload


@pytest.fixture
def homes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


def test_text_to_image_config_lists_base_fid_lpips_clip_at_their_cache_paths(homes):
    entries = wi.weights_needed(_config(homes)[0])
    by_what = {e.what: e for e in entries}
    assert [e.config_field for e in entries] == ["model.base", "score.fid_features", "score.lpips", "score.clip_model"]
    assert by_what["base diffusers pipeline"].path == homes / "hf" / "hub" / "models--org--tiny-sd"
    fid = by_what["FID InceptionV3 (pytorch-fid)"]
    assert fid.path == homes / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth" and fid.required
    lpips = by_what["LPIPS AlexNet backbone (torchvision ImageNet)"]
    assert lpips.path.name == "alexnet-owt-7be5be79.pth" and not lpips.required
    assert lpips.source.endswith("/alexnet-owt-7be5be79.pth")

    lines, ok = wi.inventory_lines(entries)
    assert not ok and sum(line.startswith("MISSING") for line in lines) == 2
    # Required files in place -> ok, while the optional ones stay listed as missing.
    fid.path.parent.mkdir(parents=True)
    fid.path.write_bytes(b"x")
    snapshot = homes / "hf" / "hub" / "models--org--tiny-sd" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (homes / "hf" / "hub" / "models--org--tiny-sd" / "refs").mkdir()
    (homes / "hf" / "hub" / "models--org--tiny-sd" / "refs" / "main").write_text("0" * 40)
    lines, ok = wi.inventory_lines(wi.weights_needed(_config(homes)[0]))
    assert ok, lines
    assert any(line.startswith("missing (optional)") and "alexnet" in line for line in lines)


def test_supervised_pretrained_lists_torchvision_file(homes):
    config = RunConfig.model_validate({
        "run_name": "s", "task": "classification", "ingest": {"dataset_dir": str(homes), "label_column": "label"},
        "model": {"architecture": "resnet18", "pretrained": True}, "register": {"model_name": "m", "experiment": "e"},
    })
    (entry,) = wi.weights_needed(config)
    assert entry.path == homes / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth" and entry.required


def test_fetch_lays_out_hf_home_and_torch_home_and_reports_each_failure(homes):
    entries = wi.weights_needed(_config(homes)[0])
    target = homes / "cache"
    calls = []

    def fake_hub(repo_id, hub_cache):
        calls.append(("hub", repo_id, hub_cache))
        if "clip" in repo_id:
            raise OSError("Temporary failure in name resolution")

    def fake_file(url, destination):
        calls.append(("file", url, destination))
        if "alexnet" in url:
            raise ConnectionError("Network is unreachable")
        destination.write_bytes(b"weights")

    done, failed = wi.fetch_weights(entries, target, fake_hub, fake_file)
    assert ("hub", "org/tiny-sd", target / "hub") in calls
    assert (target / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").read_bytes() == b"weights"
    assert len(done) == 2 and len(failed) == 2
    assert "alexnet-owt-7be5be79.pth" in failed[0] and "Network is unreachable" in failed[0]
    assert "openai/clip-vit-base-patch16" in failed[1] and "name resolution" in failed[1]
    # The plan puts hub models where HF_HOME/hub keeps them.
    plan = dict((e.what, p) for e, p in wi.fetch_plan(entries, target))
    assert plan["base diffusers pipeline"] == target / "hub" / "models--org--tiny-sd"


def test_weights_check_cli_exit_codes(homes, tmp_path):
    _, payload = _config(homes)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(payload))
    env = {"TORCH_HOME": str(homes / "torch"), "HF_HUB_CACHE": str(homes / "hf" / "hub"), "HF_HUB_OFFLINE": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-m", "trainflow", "weights", "check", "--config", str(path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stderr
    assert "MISSING" in result.stdout and "pt_inception-2015-12-05-6726825d.pth" in result.stdout
    assert "Traceback" not in result.stderr
