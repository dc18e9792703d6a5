"""The supervised model zoo and its model folder: shapes, normalisation inside, pretrained weights from disk, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from trainflow.config.model import ModelConfig
from trainflow.errors import ConfigError, MissingWeightsError, UserFacingError
from trainflow.models.model_folder import load_model_folder, save_model_folder
from trainflow.models.zoo import build_model, pretrained_weights_path


def _images(n: int, channels: int, height: int, width: int | None = None) -> torch.Tensor:
    return torch.rand(n, channels, height, width or height, generator=torch.Generator().manual_seed(0))


# ---- building -------------------------------------------------------------------------------------

def test_mlp_normalises_features_inside_the_model():
    cfg = ModelConfig(architecture="mlp", hidden_sizes=[16, 8], dropout=0.1)
    model = build_model(cfg, in_features=4, num_outputs=2,
                        input_mean=[1.0, 2.0, 3.0, 4.0], input_std=[2.0, 2.0, 4.0, 4.0]).eval()
    features = torch.randn(5, 4)
    assert model(features).shape == (5, 2)
    expected = model.network((features - torch.tensor([1.0, 2, 3, 4])) / torch.tensor([2.0, 2, 4, 4]))
    torch.testing.assert_close(model(features), expected)
    assert [m.out_features for m in model.network if isinstance(m, torch.nn.Linear)] == [16, 8, 2]


@pytest.mark.parametrize("size", [8, 13, 32])
def test_small_cnn_classifies_images_of_any_size_from_8(size):
    model = build_model(ModelConfig(architecture="small_cnn", width=8), in_channels=1, num_outputs=10)
    assert model(_images(3, 1, size)).shape == (3, 10)


@pytest.mark.parametrize(("height", "width"), [(8, 8), (9, 11), (24, 24)])
def test_seg_cnn_gives_per_pixel_logits_at_the_input_size(height, width):
    model = build_model(ModelConfig(architecture="seg_cnn", width=4), per_pixel=True, in_channels=3, num_outputs=3)
    assert model(_images(2, 3, height, width)).shape == (2, 3, height, width)


def test_resolution_resizes_inside_the_model_and_segmentation_comes_back_at_input_size():
    classifier = build_model(ModelConfig(architecture="small_cnn", width=4), num_outputs=2, resolution=8)
    images = _images(2, 3, 16)
    resized = torch.nn.functional.interpolate(images, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    classifier.eval()
    torch.testing.assert_close(classifier(images), classifier(resized))
    segmenter = build_model(ModelConfig(architecture="seg_cnn", width=4), per_pixel=True, num_outputs=2, resolution=8)
    assert segmenter(images).shape == (2, 2, 16, 16)


def test_torchvision_models_by_name():
    classifier = build_model(ModelConfig(architecture="resnet18"), in_channels=1, num_outputs=4)
    assert classifier.network.fc.out_features == 4
    assert classifier(_images(2, 1, 32)).shape == (2, 4)  # grayscale repeated to RGB inside
    segmenter = build_model(ModelConfig(architecture="lraspp_mobilenet_v3_large"), per_pixel=True, num_outputs=3).eval()
    logits = segmenter(_images(1, 3, 16))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 3, 16, 16)  # the {"out": ...} dict unwrapped


@pytest.mark.parametrize(("architecture", "task", "kind", "message"), [
    ("mlp", "classification", "images", "mlp takes tables"),
    ("small_cnn", "regression", "tables", "small_cnn takes images"),
    ("small_cnn", "segmentation", "images", "use seg_cnn for segmentation"),
    ("seg_cnn", "classification", "images", "seg_cnn gives per-pixel logits"),
    ("resnet18", "segmentation", "images", "resnet18 does not give the per-pixel outputs"),
    ("fcn_resnet50", "classification", "images", "fcn_resnet50 does not give the one-per-record outputs"),
    ("fasterrcnn_resnet50_fpn", "classification", "images", "detection/video/quantized"),
    ("resnet81", "classification", "images", r"unknown architecture 'resnet81'; did you mean resnet18"),
    ("smal_cnn", "classification", "images", "did you mean small_cnn"),
])
def test_architectures_that_do_not_fit_name_the_field(architecture, task, kind, message):
    inputs = {"in_features": 5} if kind == "tables" else {"in_channels": 3}
    with pytest.raises(ConfigError, match=rf"^model\.architecture: .*{message}"):
        build_model(ModelConfig(architecture=architecture), per_pixel=task == "segmentation", num_outputs=2, **inputs)


def test_pretrained_applies_to_torchvision_only():
    with pytest.raises(ConfigError, match=r"^model\.pretrained: .*torchvision architectures only"):
        build_model(ModelConfig(architecture="small_cnn", pretrained=True), num_outputs=2)


# ---- pretrained weights from disk -----------------------------------------------------------------

@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home"


@pytest.fixture
def fake_resnet18_weights(torch_home) -> dict[str, torch.Tensor]:
    """A randomly initialised resnet18 state dict where torchvision would keep the ImageNet file."""
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    # Like torchvision's real file, which predates BatchNorm's num_batches_tracked.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = pretrained_weights_path("resnet18")
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_pretrained_weights_load_from_torch_home_with_a_new_head(fake_resnet18_weights):
    model = build_model(ModelConfig(architecture="resnet18", pretrained=True), num_outputs=5)
    loaded = model.network.state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.running_mean", "layer4.1.conv2.weight"):
        assert torch.equal(loaded[key], fake_resnet18_weights[key]), key
    assert loaded["fc.weight"].shape == (5, 512)
    # ImageNet normalisation, since none was given for a pretrained model.
    torch.testing.assert_close(model.input_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    grayscale = build_model(ModelConfig(architecture="resnet18", pretrained=True), in_channels=1,
                            num_outputs=5)
    torch.testing.assert_close(grayscale.input_mean.flatten(), torch.tensor([(0.485 + 0.456 + 0.406) / 3]))
    assert torch.equal(grayscale.network.conv1.weight, fake_resnet18_weights["conv1.weight"])


def test_pretrained_head_is_kept_when_the_class_count_matches(fake_resnet18_weights):
    model = build_model(ModelConfig(architecture="resnet18", pretrained=True), num_outputs=1000,
                        input_mean=[0.5] * 3, input_std=[0.25] * 3)
    assert torch.equal(model.network.fc.weight, fake_resnet18_weights["fc.weight"])
    torch.testing.assert_close(model.input_std.flatten(), torch.tensor([0.25] * 3))


def test_missing_pretrained_weights_name_the_expected_path(torch_home):
    with pytest.raises(MissingWeightsError) as caught:
        build_model(ModelConfig(architecture="resnet18", pretrained=True), num_outputs=5)
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in str(caught.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(caught.value)
    assert str(caught.value).startswith("model.pretrained: ")


def test_weights_path_takes_safetensors_and_refuses_weights_of_another_model(tmp_path):
    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    save_file(state, str(tmp_path / "mine.safetensors"))
    model = build_model(ModelConfig(architecture="resnet18", weights_path=str(tmp_path / "mine.safetensors")),
                        num_outputs=10)
    assert torch.equal(model.network.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(model.network.fc.weight, state["fc.weight"])
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    del state["layer2.0.bn1.bias"]
    save_file(state, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserFacingError, match=r"^model\.weights_path: .*missing: layer2\.0\.bn1\.bias; wrong shape: layer1\.0\.conv1\.weight"):
        build_model(ModelConfig(architecture="resnet18", weights_path=str(tmp_path / "other.safetensors")),
                    num_outputs=10)
    with pytest.raises(MissingWeightsError, match=r"^model\.weights_path: .*absent\.pth does not exist"):
        build_model(ModelConfig(architecture="resnet18", weights_path=str(tmp_path / "absent.pth")), num_outputs=2)


def test_segmentation_checkpoint_gets_new_heads_for_fewer_classes(torch_home):
    torch.manual_seed(3)
    state = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None,
                                         num_classes=21).state_dict()
    path = pretrained_weights_path("lraspp_mobilenet_v3_large")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    model = build_model(ModelConfig(architecture="lraspp_mobilenet_v3_large", pretrained=True), per_pixel=True, num_outputs=2)
    loaded = model.network.state_dict()
    assert torch.equal(loaded["backbone.0.0.weight"], state["backbone.0.0.weight"])
    assert torch.equal(loaded["classifier.cbr.0.weight"], state["classifier.cbr.0.weight"])
    assert loaded["classifier.low_classifier.weight"].shape[0] == 2 and loaded["classifier.high_classifier.weight"].shape[0] == 2


# ---- model folder ---------------------------------------------------------------------------------

ROUND_TRIPS = [
    ("mlp", "classification", {"in_features": 6}, torch.randn(4, 6)),
    ("small_cnn", "regression", {"in_channels": 1}, _images(4, 1, 8)),
    ("seg_cnn", "segmentation", {"in_channels": 3}, _images(2, 3, 12)),
    ("resnet18", "classification", {"in_channels": 3}, _images(2, 3, 16)),
]


@pytest.mark.parametrize(("architecture", "task", "inputs", "batch"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_model_folder_round_trip_gives_identical_outputs(tmp_path, architecture, task, inputs, batch):
    width = inputs.get("in_features") or inputs["in_channels"]
    cfg = ModelConfig(architecture=architecture, width=4, hidden_sizes=[8])
    model = build_model(cfg, per_pixel=task == "segmentation", num_outputs=3, input_mean=[0.3] * width, input_std=[0.7] * width, **inputs)
    model.train()
    model(batch)  # moves BatchNorm running statistics away from their defaults, so they must be saved
    model.eval()
    save_model_folder(model, tmp_path / "model", {"class_names": ["a", "b", "c"], "task": task})
    loaded, meta = load_model_folder(tmp_path / "model")
    assert not loaded.training
    assert meta == {"class_names": ["a", "b", "c"], "task": task, "architecture": architecture}
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    torch.testing.assert_close(loaded.input_std, model.input_std)


def test_model_folder_stores_shared_tensors_once(tmp_path):
    model = build_model(ModelConfig(architecture="mlp", hidden_sizes=[4, 4]), in_features=4, num_outputs=1)
    model.network[3].weight = model.network[0].weight  # tied layers
    save_model_folder(model, tmp_path / "tied", {})
    loaded, _ = load_model_folder(tmp_path / "tied")
    features = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(loaded(features), model.eval()(features))


def test_model_folder_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"config\.json is missing"):
        load_model_folder(tmp_path)
    model = build_model(ModelConfig(architecture="mlp"), in_features=2, num_outputs=1)
    save_model_folder(model, tmp_path / "m", {})
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match=r"model\.safetensors is missing"):
        load_model_folder(tmp_path / "m")
    other = build_model(ModelConfig(architecture="mlp", hidden_sizes=[3]), in_features=2, num_outputs=1)
    save_model_folder(other, tmp_path / "other", {})
    save_model_folder(model, tmp_path / "m", {})
    (tmp_path / "other" / "model.safetensors").replace(tmp_path / "m" / "model.safetensors")
    with pytest.raises(UserFacingError, match=r"model\.safetensors does not match .*config\.json .*size mismatch"):
        load_model_folder(tmp_path / "m")
    foreign = tmp_path / "hf"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (foreign / "model.safetensors").write_bytes(b"not used")
    with pytest.raises(UserFacingError, match="was not written by trainflow's supervised tasks"):
        load_model_folder(foreign)
    with pytest.raises(TypeError, match="takes a model from trainflow.models.zoo.build_model"):
        save_model_folder(torch.nn.Linear(2, 1), tmp_path / "plain", {})
