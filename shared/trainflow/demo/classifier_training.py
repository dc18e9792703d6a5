"""Train the demo's digits classifier (feature extractor for digits-FID and prompt accuracy)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import trange

from trainflow.demo.digits_dataset import DIGIT_WORDS, digits_as_images
from trainflow.models.image_classifier import ImageClassifier


def images_to_tensor(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images])).permute(0, 3, 1, 2).float() / 255.0


def train_digits_classifier(seed: int = 0, epochs: int = 8) -> tuple[ImageClassifier, float]:
    """Return (classifier, held-out accuracy). The accuracy proves its features are informative."""
    torch.manual_seed(seed)
    images, labels = digits_as_images()
    pixels = images_to_tensor(images)
    targets = torch.from_numpy(labels)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=labels)
    mean = pixels[train_idx].mean(dim=(0, 2, 3)).tolist()
    std = (pixels[train_idx].std(dim=(0, 2, 3)) + 1e-6).tolist()
    config = {
        "architecture": "small_convnet", "name": "digits-classifier", "width": 32, "resolution": pixels.shape[-1],
        "class_names": list(DIGIT_WORDS), "mean": mean, "std": std,
        "trained_on": "scikit-learn digits (80% split)",
    }
    model = ImageClassifier(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in trange(epochs, desc="demo: training digits classifier", unit="epoch", disable=None):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=generator)]
        for batch in order.split(64):
            x = pixels[batch]
            # Small random shifts make the features robust to imperfect generations.
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(x), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = model(pixels[test_idx]).argmax(dim=1)
    accuracy = (predictions == targets[test_idx]).float().mean().item()
    config["held_out_accuracy"] = round(accuracy, 4)
    return model, accuracy
