"""Fréchet distance between two Gaussians, and streaming mean/covariance in float64.

FID (Heusel et al. 2017) models each feature set as a Gaussian N(mu, Sigma) and reports

    d^2 = |mu1 - mu2|^2 + tr(Sigma1) + tr(Sigma2) - 2 tr((Sigma1 Sigma2)^(1/2)).

The matrix square root is the fragile part: with fewer samples than feature dimensions the
covariances are singular and `scipy.linalg.sqrtm` of their product can come back with
non-finite entries or a large residual. The usual remedy (the one every FID implementation
applies) is to add eps * I to both covariances and take the root again. A square root of a
product of two PSD matrices has real eigenvalues in exact arithmetic; a numerically complex
result is accepted only when its imaginary part is negligible, otherwise it is an error rather
than a silently wrong number. `method="eigen"` computes the same trace from symmetric
eigendecompositions (exact for PSD matrices, much faster than Schur-based sqrtm at 2048-d).

Statistics are accumulated batch by batch with Chan et al.'s pairwise update of the mean and
the centred scatter matrix, in float64, so a reference set of any size never has to be held
in memory and large feature means do not cancel catastrophically.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import linalg
from scipy.linalg import LinAlgWarning

log = logging.getLogger(__name__)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, imag_atol: float = 1e-3, method: str = "sqrtm") -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (squared, as FID reports it).

    method "sqrtm" (the reference computation): scipy.linalg.sqrtm of sigma1 @ sigma2; when the
    root is not finite, does not square back to the product, or has a non-negligible imaginary
    diagonal, it is taken again of (sigma1 + eps I)(sigma2 + eps I); an imaginary part above
    `imag_atol` after that is an error. Schur-based sqrtm of a 2048x2048 matrix takes tens of
    seconds on a small CPU.
    method "eigen": the same trace from symmetric eigendecompositions only. With
    sigma1 = V W V^T and R = V W^(1/2), sigma1 @ sigma2 is similar to the PSD matrix
    R^T sigma2 R, so tr((sigma1 sigma2)^(1/2)) is the sum of the square roots of its eigenvalues.
    Exact for PSD inputs (no offset needed, singular or not), and several times faster.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be {d}x{d}, got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps, imag_atol)
    elif method == "eigen":
        tr_covmean = _trace_sqrt_product_eigen(sigma1, sigma2, imag_atol)
    else:
        raise ValueError(f"unknown method {method!r}; use 'sqrtm' or 'eigen'")
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _trace_sqrt_product_sqrtm(sigma1, sigma2, eps: float, imag_atol: float) -> float:
    covmean = _sqrtm_checked(sigma1 @ sigma2, imag_atol)
    if covmean is None:
        log.warning("sqrtm(sigma1 @ sigma2) is not finite, inaccurate or complex; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm_checked((sigma1 + offset) @ (sigma2 + offset), imag_atol=np.inf)
        if covmean is None:
            raise ValueError("matrix square root failed even with the diagonal offset "
                             f"(eps={eps}); the covariances are not valid")
    if np.iscomplexobj(covmean):
        worst = _worst_imag(covmean)
        if worst > imag_atol:
            raise ValueError(f"matrix square root has an imaginary component of {worst:.3g} on its "
                             "diagonal; the covariances are not positive semi-definite")
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigen(sigma1, sigma2, imag_atol: float) -> float:
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    scale = max(float(np.abs(w).max(initial=0.0)), 1e-300)
    if w.min() < -imag_atol * scale:
        raise ValueError(f"sigma1 has a negative eigenvalue {w.min():.3g}; it is not positive semi-definite")
    r = v * np.sqrt(np.clip(w, 0.0, None))
    m = r.T @ sigma2 @ r
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    scale = max(float(np.abs(ev).max(initial=0.0)), 1e-300)
    if ev.min() < -imag_atol * scale:
        raise ValueError(f"sigma1 @ sigma2 has a negative eigenvalue {ev.min():.3g}; "
                         "the covariances are not positive semi-definite")
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def _worst_imag(a: np.ndarray) -> float:
    return float(np.max(np.abs(np.diagonal(a).imag))) if np.iscomplexobj(a) else 0.0


def _sqrtm_checked(a: np.ndarray, imag_atol: float, max_rel_residual: float = 1e-3) -> np.ndarray | None:
    """sqrtm(a), or None when it is not finite, does not square back to `a`, or is clearly complex."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)  # singular products are handled here
        root = linalg.sqrtm(a)
    if not np.all(np.isfinite(root)) or _worst_imag(root) > imag_atol:
        return None
    norm = np.linalg.norm(a)
    if norm > 0 and np.linalg.norm(root @ root - a) / norm > max_rel_residual:
        return None
    return root


class RunningStats:
    """Mean and covariance of a stream of feature batches, in float64.

    `update(batch)` takes [n, d] features; `mean`, `cov` (unbiased, like np.cov) and `count`
    are available at any time. Batches are merged with Chan et al.'s pairwise formula.
    """

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.count = 0
        self._mean = np.zeros(self.dim, dtype=np.float64)
        self._scatter = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, batch) -> None:
        x = np.asarray(batch, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape [n, {self.dim}], got {x.shape}")
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._scatter += scatter_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, have {self.count}")
        return self._scatter / (self.count - 1)
