"""CLIP score, LPIPS, PSNR and SSIM equal their reference implementations on locally built weights."""

from __future__ import annotations

import pytest
import torch

from trainflow.errors import MissingWeightsError, UserFacingError
from trainflow.metrics import generation_metrics as gm
from trainflow.metrics import image_quality as iq


CAPTIONS = [f"a handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five")]


def _images(seed: int, n: int = 6, size: int = 32) -> torch.Tensor:
    return iq.quantise_like_png(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory):
    """A CLIP model (random, seeded) and processor saved with save_pretrained: what score.clip_model points to."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from trainflow.demo.tiny_stable_diffusion import build_caption_tokenizer, caption_words

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 200, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model = CLIPModel(config).eval()
    tokenizer = build_caption_tokenizer(caption_words())
    assert len(tokenizer) <= 200
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    # Random towers share a bias direction, so every cosine can land below 0 and CLIPScore
    # clamps them all to 0 (a comparison of zeros proves nothing). Flipping one projection's
    # sign when that happens keeps the weights random but the scores positive and varied.
    inputs = processor(text=CAPTIONS, images=list((_images(0) * 255).round().to(torch.uint8)), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
        if (out.image_embeds * out.text_embeds).sum(-1).mean() < 0:
            model.text_projection.weight.neg_()
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_equals_torchmetrics_clipscore(tiny_clip_folder):
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    images, captions = _images(0), CAPTIONS
    ours = gm.clip_score(gm.load_clip_score(tiny_clip_folder, torch.device("cpu")), images, captions, batch_size=4)

    # torchmetrics 1.9 cannot read transformers 5's feature outputs by itself (AttributeError), hence the unwrapping.
    model, processor = CLIPModel.from_pretrained(tiny_clip_folder).eval(), CLIPProcessor.from_pretrained(tiny_clip_folder)
    reference = CLIPScore(model_name_or_path=lambda: (gm.tensor_feature_clip(model), processor))
    reference.update(list((images * 255).round().to(torch.uint8)), captions)
    assert ours == pytest.approx(float(reference.compute()), rel=1e-5)

    # And the definition by hand: 100 * max(cos(image, caption), 0), averaged, from CLIPModel's own forward.
    fresh = CLIPModel.from_pretrained(tiny_clip_folder).eval()
    inputs = processor(text=captions, images=list((images * 255).round().to(torch.uint8)), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = fresh(**inputs)
    cosine = (out.image_embeds * out.text_embeds).sum(-1)
    assert (cosine > 0).sum() >= 3 and cosine.std() > 0.01, "the tiny CLIP's scores must vary for the comparison to mean anything"
    assert ours == pytest.approx(float((100 * cosine.clamp(min=0)).mean()), rel=1e-4)

    # Informative: other images (and other captions) give a clearly different score.
    metric = gm.load_clip_score(tiny_clip_folder, torch.device("cpu"))
    other = gm.clip_score(metric, _images(9), list(reversed(captions)))
    assert abs(other - ours) > 0.1
    assert gm.clip_score(metric, images, captions) == pytest.approx(ours, rel=1e-5)  # reset between uses


def test_broken_clip_folder_is_one_clear_sentence(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserFacingError, match="CLIP model folder .* cannot be loaded"):
        gm.load_clip_score(tmp_path, torch.device("cpu"))


@pytest.fixture(scope="module")
def torch_home_with_alexnet(tmp_path_factory):
    """TORCH_HOME holding torchvision's AlexNet layout (seeded random weights) under its ImageNet file name."""
    import torchvision

    from trainflow.metrics.weights import LPIPS_BACKBONE_FILES

    home = tmp_path_factory.mktemp("torch-home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), checkpoints / LPIPS_BACKBONE_FILES["alex"])
    return home


def test_lpips_equals_lpips_package(torch_home_with_alexnet, monkeypatch):
    import lpips

    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))
    ours = iq.load_lpips(torch.device("cpu"))
    reference = lpips.LPIPS(net="alex", verbose=False).eval()  # the package's own loading, same files
    a, b = _images(1, n=8, size=64), _images(2, n=8, size=64)
    with torch.no_grad():
        expected = reference(a * 2 - 1, b * 2 - 1).flatten()
    distances = iq.lpips_distances(ours, a, b)
    torch.testing.assert_close(distances, expected, rtol=1e-5, atol=1e-6)
    assert iq.lpips_to_reference(ours, a, b) == pytest.approx(float(expected.mean()), rel=1e-5)

    # Diversity is the mean over disjoint seeded pairs of the same distance.
    order = torch.randperm(8, generator=torch.Generator().manual_seed(3)).view(-1, 2)
    with torch.no_grad():
        pairs = reference(a[order[:, 0]] * 2 - 1, a[order[:, 1]] * 2 - 1).flatten()
    assert iq.lpips_diversity(ours, a, seed=3) == pytest.approx(float(pairs.mean()), rel=1e-5)

    # Informative: identical images score 0, different ones clearly more.
    assert iq.lpips_to_reference(ours, a, a) == pytest.approx(0.0, abs=1e-6)
    assert distances.min().item() > 1e-3


def test_lpips_missing_backbone_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        iq.load_lpips(torch.device("cpu"))


def test_psnr_ssim_equal_torchmetrics_with_explicit_range():
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    a, b = _images(4), _images(5)
    reference_psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="none", dim=(1, 2, 3))(a, b).mean()
    assert iq.psnr(a, b) == pytest.approx(float(reference_psnr), rel=1e-6)
    assert iq.ssim(a, b) == pytest.approx(float(StructuralSimilarityIndexMeasure(data_range=1.0)(a, b)), rel=1e-6)
    # Explicit range: a dim image pair keeps its score instead of the range shrinking with the content.
    assert iq.psnr(a * 0.5, b * 0.5) == pytest.approx(iq.psnr(a, b) + 20 * torch.log10(torch.tensor(2.0)).item(), rel=1e-5)
    assert iq.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(UserFacingError, match="same shape"):
        iq.psnr(a, b[:2])


def test_quantise_like_png_rounds_to_uint8_levels():
    x = torch.tensor([0.0, 0.5, 1.0, 1.2, 0.1234])
    assert torch.equal(iq.quantise_like_png(x) * 255, torch.tensor([0.0, 128.0, 255.0, 255.0, 31.0]))


def test_score_stage_builds_every_scorer_before_generating(tmp_path, monkeypatch):
    """A broken CLIP folder and missing LPIPS weights are reported from the config alone, before any sampling."""
    from trainflow.config import ScoreConfig, parse_section
    from trainflow.stages.score_generation import _build_scorers

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    broken_clip = tmp_path / "clip"
    broken_clip.mkdir()
    (broken_clip / "config.json").write_text("{}")
    cfg = parse_section(ScoreConfig, {"clip_model": str(broken_clip), "lpips": True}, "the score section")
    real = _images(7, n=4)
    scorers, skipped = _build_scorers(cfg, [], real, torch.device("cpu"), seed=0)
    assert "cannot be loaded" in skipped["clip_score"]
    assert "alexnet-owt-7be5be79.pth" in skipped["lpips"] and skipped["lpips_diversity"] == skipped["lpips"]
    assert "prompt_classifier" in skipped["prompt_accuracy"]
    assert sorted(scorers) == ["psnr", "ssim"]
    assert scorers["ssim"](real) == pytest.approx(1.0, abs=1e-6) and scorers["psnr"](_images(8, n=4)) < 20
