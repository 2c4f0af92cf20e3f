"""Fréchet distance between Gaussian fits of two feature sets (FID), in float64 on the host.

FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})  (METHODS §5.2).

The trace of the matrix square root is computed without `sqrtm`: S_a S_b is similar to the
symmetric PSD matrix R S_b R with R = S_a^{1/2}, so Tr (S_a S_b)^{1/2} is the sum of the
square roots of the eigenvalues of R S_b R. Only symmetric eigensolvers are used, which
never return complex parts and need no 1e-6 * I fudge when a covariance is singular (as it
is whenever N <= F or features contain dead ReLU units).
"""

import numpy as np


def _as_feature_matrix(feats: np.ndarray, name: str) -> np.ndarray:
    """Returns `feats` as float64 [N,F] after checking shape and finiteness."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(
            f"{name} must be a feature matrix [N,F]; got shape {feats.shape}. "
            "Flatten or pool the features to one vector per image first."
        )
    if feats.shape[0] < 2:
        raise ValueError(
            f"{name} has {feats.shape[0]} rows; a covariance needs at least 2 feature vectors."
        )
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"{name} contains NaN or Inf; check the feature network's inputs.")
    return feats


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set.

    Args:
      feats: [N,F] features, N >= 2.

    Returns:
      (mu [F] float64, sigma [F,F] float64), sigma divided by N - 1.
    """
    feats = _as_feature_matrix(feats, "feats")
    mu = feats.mean(axis=0)
    centred = feats - mu
    sigma = centred.T @ centred / (feats.shape[0] - 1)
    return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix [F,F] (eigenvalues clipped at 0)."""
    w, u = np.linalg.eigh(sigma)
    # Round-off makes the smallest eigenvalues of a singular covariance slightly negative.
    return (u * np.sqrt(np.clip(w, 0.0, None))) @ u.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """Tr((sigma_a sigma_b)^{1/2}) for symmetric PSD [F,F] matrices, via eigh (stable)."""
    root_a = _psd_sqrt(sigma_a)
    m = root_a @ sigma_b @ root_a
    m = 0.5 * (m + m.T)  # exact symmetry for eigvalsh; round-off breaks it slightly
    eigenvalues = np.linalg.eigvalsh(m)
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance_from_stats(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b).

    Args:
      mu_a, mu_b: [F] means.
      sigma_a, sigma_b: [F,F] symmetric PSD covariances.

    Returns:
      The distance as a Python float (>= 0 up to round-off; clipped at 0).
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    f = mu_a.shape[0]
    for name, arr, shape in (
        ("mu_b", mu_b, (f,)),
        ("sigma_a", sigma_a, (f, f)),
        ("sigma_b", sigma_b, (f, f)),
    ):
        if arr.shape != shape:
            raise ValueError(
                f"{name} has shape {arr.shape}, expected {shape} to match mu_a of shape {(f,)}; "
                "both statistics must come from the same feature network."
            )
    diff = mu_a - mu_b
    distance = (
        diff @ diff
        + np.trace(sigma_a)
        + np.trace(sigma_b)
        - 2.0 * trace_sqrt_product(sigma_a, sigma_b)
    )
    # Identical sets give -1e-13 and the like; a distance is never negative.
    return max(float(distance), 0.0)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets, e.g. real [N,F] and generated [M,F] features.

    Args:
      feats_a: [N,F] features (N >= 2).
      feats_b: [M,F] features (M >= 2), same F.

    Returns:
      The Fréchet distance of the two Gaussian fits (unbiased covariances), float64 math.
    """
    feats_a = _as_feature_matrix(feats_a, "feats_a")
    feats_b = _as_feature_matrix(feats_b, "feats_b")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"feature widths differ: feats_a is {feats_a.shape}, feats_b is {feats_b.shape}; "
            "compute both with the same feature network."
        )
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))
