"""KID: the kernel (MMD) distance between two feature sets, reported beside FID.

KID is the unbiased estimate of the squared maximum mean discrepancy with the
polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets of
equal size. Unlike FID it has no bias that depends on the number of images,
so it is the better number for test splits of a few hundred images.
"""

from __future__ import annotations

import dataclasses

import torch

from trainflow.errors import UserFacingError

DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000
MAX_GRAM_ENTRIES = 6000**2  # full kernel matrices up to 288 MB of float64, else per-subset products


@dataclasses.dataclass(frozen=True)
class KernelDistance:
    mean: float
    std: float  # population std over subsets, as torchmetrics reports it
    subsets: int
    subset_size: int


def _polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² between two equal-size samples (m, d) under the cubic polynomial kernel."""
    return _mmd2_from_kernels(_polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y))


def _mmd2_from_kernels(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> float:
    m = k_xx.shape[0]
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features1: torch.Tensor, features2: torch.Tensor, subsets: int = DEFAULT_SUBSETS,
    subset_size: int = DEFAULT_SUBSET_SIZE, seed: int = 0,
) -> KernelDistance:
    """KID between two feature sets (n1, d) and (n2, d), as mean and std over seeded random subsets.

    The subset size is min(subset_size, n1, n2). Subsets are drawn like torchmetrics'
    KernelInceptionDistance draws them (randperm of each side in turn), from a
    generator seeded with `seed`, so torchmetrics after torch.manual_seed(seed)
    picks the same subsets. We do not call torchmetrics' metric itself because it
    draws from the global RNG and wants a feature network, while our features
    are already streamed. Computed in float64.
    Raises UserFacingError when either side has fewer than 2 samples or the widths differ.
    """
    if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
        raise UserFacingError(f"KID needs two feature sets of the same width, got {tuple(features1.shape)} and {tuple(features2.shape)}")
    size = min(subset_size, features1.shape[0], features2.shape[0])
    if size < 2:
        raise UserFacingError("KID needs at least 2 images on each side")
    x_all, y_all = features1.double(), features2.double()
    n1, n2 = x_all.shape[0], y_all.shape[0]
    # The kernel is a function of one dot product, so a subset's kernel matrices are submatrices of
    # the full ones: compute those once when they fit, instead of 3 matrix products per subset.
    gram = None
    if (n1 + n2) ** 2 <= MAX_GRAM_ENTRIES:
        gram = (_polynomial_kernel(x_all, x_all), _polynomial_kernel(y_all, y_all), _polynomial_kernel(x_all, y_all))
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        ix = torch.randperm(n1, generator=generator)[:size]
        iy = torch.randperm(n2, generator=generator)[:size]
        if gram is None:
            values.append(unbiased_mmd2(x_all[ix], y_all[iy]))
        else:
            k_xx, k_yy, k_xy = gram
            values.append(_mmd2_from_kernels(k_xx[ix][:, ix], k_yy[iy][:, iy], k_xy[ix][:, iy]))
    scores = torch.tensor(values, dtype=torch.float64)
    return KernelDistance(float(scores.mean()), float(scores.std(unbiased=False)), subsets, size)
