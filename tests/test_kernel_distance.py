"""KID equals torchmetrics' KernelInceptionDistance on the same features, and a brute-force MMD²."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchmetrics.image.kid import KernelInceptionDistance

from trainflow.errors import UserFacingError
from trainflow.metrics import kernel_distance
from trainflow.metrics.kernel_distance import kernel_inception_distance, unbiased_mmd2


def features(n: int, dims: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, dims, generator=generator, dtype=torch.float64) + shift)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_matches_torchmetrics_with_the_same_seed():
    real, fake = features(120, 32, seed=0), features(90, 32, seed=1, shift=0.3)
    ours = kernel_inception_distance(real, fake, subsets=7, subset_size=50, seed=11)

    metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=7, subset_size=50)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(11)  # torchmetrics draws its subsets from the global generator, in the order we do
    mean, std = metric.compute()
    assert ours.mean == pytest.approx(mean.item(), rel=1e-10)
    assert ours.std == pytest.approx(std.item(), rel=1e-8)
    assert ours.subset_size == 50 and ours.subsets == 7


def test_full_kernel_matrices_give_the_per_subset_values(monkeypatch):
    real, fake = features(80, 24, seed=7), features(60, 24, seed=8, shift=0.2)
    from_gram = kernel_inception_distance(real, fake, subsets=9, subset_size=40, seed=3)
    monkeypatch.setattr(kernel_distance, "MAX_GRAM_ENTRIES", 0)  # the per-subset products
    per_subset = kernel_inception_distance(real, fake, subsets=9, subset_size=40, seed=3)
    assert from_gram.mean == pytest.approx(per_subset.mean, rel=1e-12)
    assert from_gram.std == pytest.approx(per_subset.std, rel=1e-9)


def test_unbiased_mmd_equals_the_double_sum():
    x, y = features(9, 5, seed=2), features(9, 5, seed=3, shift=0.5)

    def k(a, b):
        return (float(a @ b) / 5 + 1) ** 3

    m = len(x)
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert unbiased_mmd2(x, y) == pytest.approx(within - 2 * across, rel=1e-12)


def test_separates_different_sets_and_is_near_zero_for_the_same_distribution():
    same = kernel_inception_distance(features(200, 16, seed=4), features(200, 16, seed=5), subsets=20, subset_size=100)
    apart = kernel_inception_distance(features(200, 16, seed=4), features(200, 16, seed=6, shift=0.5), subsets=20, subset_size=100)
    assert abs(same.mean) < 3 * same.std + 1e-3  # unbiased: centred on 0 for one distribution
    assert apart.mean > 10 * max(abs(same.mean), same.std)


def test_subset_size_shrinks_to_the_smaller_side_and_needs_two():
    assert kernel_inception_distance(features(30, 4, 0), features(12, 4, 1), subsets=3).subset_size == 12
    with pytest.raises(UserFacingError, match="at least 2 images"):
        kernel_inception_distance(features(30, 4, 0), features(1, 4, 1))
