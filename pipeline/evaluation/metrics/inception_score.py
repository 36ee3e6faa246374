"""Inception Score (Salimans et al. 2016) from class probabilities or logits.

IS = exp(E_x KL(p(y|x) || p(y))), computed on `splits` consecutive parts of the set and reported
as the mean and standard deviation over the parts. Part i holds items i*N//splits to
(i+1)*N//splits, as in the original implementation (Salimans et al.'s `get_inception_score`), so
every item counts when N is not a multiple of `splits` (parts then differ in size by one). The
original uses 10 splits; with fewer items than splits the number of splits is reduced to the
number of items and the caller is told.

The computation runs in log space: with very confident predictions the probabilities of the
other classes underflow to denormals, and their average over a split to zero, which would make
p log(p / p(y)) infinite. log p(y) = logsumexp(log p) - log n never underflows that way.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float, int]:
    """(mean, std, splits used) of the Inception Score of class probabilities [n, k]."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"expected probabilities of shape [n, classes] with n >= 1, got {p.shape}")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("rows must be probability distributions (non-negative, summing to 1)")
    with np.errstate(divide="ignore"):  # log 0 = -inf is handled below (0 log 0 = 0)
        return _score_from_log_probs(np.log(p), splits)


def inception_score_from_logits(logits: np.ndarray, splits: int = 10) -> tuple[float, float, int]:
    """The Inception Score of the softmax of `logits` [n, k]."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"expected finite logits of shape [n, classes] with n >= 1, got {x.shape}")
    return _score_from_log_probs(log_softmax(x, axis=1), splits)


def _score_from_log_probs(logp: np.ndarray, splits: int) -> tuple[float, float, int]:
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    n = logp.shape[0]
    splits = min(splits, n)
    scores = []
    for i in range(splits):
        chunk = logp[i * n // splits:(i + 1) * n // splits]
        log_marginal = logsumexp(chunk, axis=0) - np.log(len(chunk))
        p = np.exp(chunk)
        with np.errstate(invalid="ignore"):  # 0 * -inf where p = 0; those terms are 0 by definition
            terms = np.where(p > 0, p * (chunk - log_marginal), 0.0)
        scores.append(float(np.exp(terms.sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores)), splits
