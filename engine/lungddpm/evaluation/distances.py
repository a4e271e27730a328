"""Distances between two sets of feature vectors: Fréchet distance (FID) and maximum mean discrepancy (MMD)."""

from __future__ import annotations

import numpy as np

from lungddpm.errors import InputError

KERNELS = ("rbf", "polynomial")


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (negative eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½): the Fréchet distance of two Gaussians.

    Tr((Σ1 Σ2)^½) is computed as the trace of the root of the symmetric Σ1^½ Σ2 Σ1^½, whose
    eigenvalues are real and non-negative, so no complex parts or failed square roots arise.
    """
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    cross = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross)
    return max(value, 0.0)


def _check_sets(x: np.ndarray, y: np.ndarray, minimum: int) -> None:
    """Raise InputError unless x and y are 2-D with the same feature count and at least `minimum` rows each."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InputError(f"feature sets of shapes {x.shape} and {y.shape} cannot be compared; both must be (N, F)")
    if min(len(x), len(y)) < minimum:
        raise InputError(f"sets of {len(x)} and {len(y)} volumes: at least {minimum} per set are needed; add volumes")


def fid(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) (sample covariance, N − 1)."""
    _check_sets(x, y, 2)
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def median_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    """The median heuristic: median squared distance between distinct points of the pooled set."""
    pooled = np.concatenate([x, y])
    d2 = _sq_distances(pooled, pooled)
    off_diagonal = d2[~np.eye(len(pooled), dtype=bool)]
    return float(np.median(off_diagonal)) or 1.0


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (clipped at 0 against rounding)."""
    return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0, None)


def _kernel(a: np.ndarray, b: np.ndarray, kind: str, bandwidth: float) -> np.ndarray:
    """RBF exp(−‖a − b‖² / bandwidth), or KID's polynomial (a·b / F + 1)³."""
    if kind == "rbf":
        return np.exp(-_sq_distances(a, b) / bandwidth)
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd(x: np.ndarray, y: np.ndarray, kernel: str = "rbf", bandwidth: float | None = None) -> float:
    """Unbiased MMD² between two feature sets (N, F); rbf bandwidth defaults to the median heuristic.

    Unbiased: the diagonal terms k(x_i, x_i) are left out, so the estimate is 0 on average for
    one distribution and may come out slightly negative.
    """
    if kernel not in KERNELS:
        raise InputError(f"kernel {kernel!r} is unknown; choose one of {KERNELS}")
    _check_sets(x, y, 2)
    h = median_bandwidth(x, y) if kernel == "rbf" and bandwidth is None else (bandwidth or 1.0)
    kxx, kyy, kxy = _kernel(x, x, kernel, h), _kernel(y, y, kernel, h), _kernel(x, y, kernel, h)
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())
