"""The robust Fréchet distance: pytorch-fid's value where pytorch-fid has one, the exact value where it fails."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance as pytorch_fid_distance

from trainflow.errors import UserFacingError
from trainflow.metrics.frechet import frechet_distance_from_statistics, trace_sqrt_product
from trainflow.metrics.generation_metrics import frechet_distance


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def reference(*stats) -> tuple[float, str]:
    """pytorch-fid's value (NaN when it raises) and what it printed (its eps-offset notice)."""
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        warnings.simplefilter("ignore")
        try:
            value = float(pytorch_fid_distance(*stats))
        except ValueError:
            value = float("nan")
    return value, printed.getvalue()


def exact_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID of the two sample sets without any d x d square root: tr((S1^½ S2 S1^½)^½) is the
    nuclear norm of Ac Bcᵀ / sqrt((n1-1)(n2-1)) for centred features Ac, Bc (an independent, exact route)."""
    ac, bc = a - a.mean(0), b - b.mean(0)
    nuclear = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (ac**2).sum() / (len(a) - 1) + (bc**2).sum() / (len(b) - 1) - 2 * nuclear)


def feature_sets(kind: str, n1: int, n2: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.normal(size=(n1, dims)), rng.normal(size=(n2, dims)) * 1.2 + 0.3
    if kind == "relu":  # Inception's pool3 features are non-negative averages of ReLUs
        mix = rng.normal(size=(dims, dims)) / np.sqrt(dims)
        return np.maximum(rng.normal(size=(n1, dims)) @ mix, 0), np.maximum(rng.normal(size=(n2, dims)) @ mix + 0.1, 0)
    if kind == "wide-spectrum":  # like Inception features: one direction holds most of the trace, a long tail
        spectrum = np.geomspace(1, 1e-4, dims)
        spectrum[0] = 1e4
        basis, _ = np.linalg.qr(rng.normal(size=(dims, dims)))
        return ((rng.normal(size=(n1, dims)) * np.sqrt(spectrum)) @ basis.T,
                (rng.normal(size=(n2, dims)) * np.sqrt(spectrum) * 1.1) @ basis.T + 0.05)
    if kind == "low-rank":
        basis = rng.normal(size=(5, dims))
        return rng.normal(size=(n1, 5)) @ basis, rng.normal(size=(n2, 5)) @ basis * 1.3 + 0.5
    raise ValueError(kind)


CASES = [
    ("gaussian", 400, 300, 32),   # full rank
    ("gaussian", 500, 500, 128),  # full rank, near-singular estimate
    ("relu", 300, 200, 64),
    ("relu", 40, 50, 128),        # fewer samples than dimensions
    ("gaussian", 60, 60, 256),    # fewer samples than dimensions
    ("low-rank", 200, 300, 64),   # rank 5 of 64
    ("wide-spectrum", 300, 256, 256),  # squaring this spread (eigenvalues of the product) loses 1e-4
    ("wide-spectrum", 200, 200, 256),
]


@pytest.mark.parametrize("kind,n1,n2,dims", CASES)
def test_equals_pytorch_fid_where_it_returns_a_value_and_the_exact_value(kind, n1, n2, dims):
    a, b = feature_sets(kind, n1, n2, dims, seed=n1 + dims)
    stats = (*statistics(a), *statistics(b))
    expected, printed = reference(*stats)
    ours = frechet_distance_from_statistics(*stats)
    assert np.isfinite(expected) and not printed, "these cases are meant to be ones pytorch-fid handles"
    assert ours == pytest.approx(expected, rel=1e-4)
    assert ours == pytest.approx(exact_from_features(a, b), rel=1e-9)


def test_where_pytorch_fid_adds_its_eps_offset_the_gap_is_that_offset():
    """With 2 images on one side pytorch-fid's sqrtm is not finite; it then adds 1e-6 to both
    diagonals inside the square root (not to the traces), which moves its answer by up to 1e-3
    relative. We return the exact value; with the same offset our trace term gives its number."""
    rng = np.random.default_rng(7)  # a case where this machine's sqrtm returns a non-finite root
    a, b = np.maximum(rng.normal(size=(2, 16)), 0), np.maximum(rng.normal(size=(8, 16)), 0)
    mu1, s1, mu2, s2 = stats = (*statistics(a), *statistics(b))
    expected, printed = reference(*stats)
    ours = frechet_distance_from_statistics(*stats)
    assert ours == pytest.approx(exact_from_features(a, b), rel=1e-9)
    if "adding 1e-06 to diagonal" not in printed:  # another LAPACK may find a finite root: then plain agreement
        assert ours == pytest.approx(expected, rel=1e-4)
        return
    offset = np.eye(16) * 1e-6
    with_offset = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1 + offset, s2 + offset)
    assert with_offset == pytest.approx(expected, rel=1e-6)
    assert abs(ours - expected) / ours > 1e-4  # the offset's bias, which we do not copy


def analytic_case(dims: int, k: int, scale: float, seed: int = 0):
    """±scale·e_i (i < k) in a random rotation, and the same at half scale plus a shift:
    both covariances are multiples of one rank-k projector, so FID = ‖Δμ‖² + k(√a − √b)²."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dims, dims)))
    axes = np.eye(dims)[:k]
    a = np.concatenate([scale * axes, -scale * axes]) @ rotation
    b = np.concatenate([0.5 * scale * axes, -0.5 * scale * axes]) @ rotation + rng.normal(size=dims)
    var_a, var_b = 2 * scale**2 / (2 * k - 1), 2 * (0.5 * scale) ** 2 / (2 * k - 1)
    diff = a.mean(0) - b.mean(0)
    return a, b, float(diff @ diff + k * (np.sqrt(var_a) - np.sqrt(var_b)) ** 2)


@pytest.mark.parametrize("dims,k", [(64, 3), (256, 10)])
def test_finite_and_exact_where_pytorch_fid_raises(dims, k):
    a, b, expected = analytic_case(dims, k, scale=1e4)  # 2k samples, far fewer than dims
    stats = (*statistics(a), *statistics(b))
    with pytest.raises(ValueError, match="Imaginary component"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytorch_fid_distance(*stats)
    assert frechet_distance_from_statistics(*stats) == pytest.approx(expected, rel=1e-9)


def test_equal_covariances_leave_only_the_mean_term():
    a, _ = feature_sets("relu", 30, 30, 128, seed=3)  # singular covariance
    mu, sigma = statistics(a)
    shift = np.random.default_rng(4).normal(size=128) * 0.1
    assert frechet_distance_from_statistics(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-8)
    assert abs(frechet_distance_from_statistics(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_feature_tensors_use_the_robust_distance():
    a, b, expected = analytic_case(64, 3, scale=1e4)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bad,message", [
    (lambda mu, s: (mu, s, mu[:-1], s[:-1, :-1]), "has shape"),
    (lambda mu, s: (mu, s, mu, np.full_like(s, np.nan)), "NaN or infinite"),
])
def test_bad_statistics_are_one_sentence(bad, message):
    mu, sigma = statistics(np.random.default_rng(0).normal(size=(20, 8)))
    with pytest.raises(UserFacingError, match=message):
        frechet_distance_from_statistics(*bad(mu, sigma))
