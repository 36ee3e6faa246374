"""Fréchet distance, running statistics, Block-FID block counts and the Inception Score."""

import numpy as np
import pytest
from scipy import linalg

from pipeline.evaluation.metrics.blocks import block_grid, block_offsets, count_blocks, iter_blocks
from pipeline.evaluation.metrics.fid import RunningStats, frechet_distance
from pipeline.evaluation.metrics.inception_score import inception_score, inception_score_from_logits


def _random_stats(rng, d, n):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return x.mean(0), np.cov(x, rowvar=False)


def _reference_fid(mu1, s1, mu2, s2):
    # Independent formula: tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), both roots of symmetric PSD matrices.
    r1 = linalg.sqrtm(s1).real
    inner = linalg.sqrtm(r1 @ s2 @ r1).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(inner))


@pytest.mark.parametrize("method", ["sqrtm", "eigen"])
@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_scipy_reference(d, method):
    rng = np.random.default_rng(d)
    mu1, s1 = _random_stats(rng, d, 4 * d)
    mu2, s2 = _random_stats(rng, d, 4 * d)
    got = frechet_distance(mu1, s1, mu2, s2, method=method)
    want = _reference_fid(mu1, s1, mu2, s2)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-8)
    assert got > 0


@pytest.mark.parametrize("method", ["sqrtm", "eigen"])
def test_frechet_distance_of_identical_statistics_is_zero(method):
    rng = np.random.default_rng(1)
    mu, s = _random_stats(rng, 32, 200)
    assert abs(frechet_distance(mu, s, mu, s, method=method)) < 1e-6


def test_frechet_distance_of_one_dimensional_gaussians():
    # closed form: (m1-m2)^2 + (sd1-sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_survives_singular_covariances():
    # fewer samples than dimensions: rank-deficient covariances, the eps-offset path
    rng = np.random.default_rng(2)
    a = rng.normal(size=(5, 40))
    b = rng.normal(size=(5, 40)) + 0.5
    got = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert np.isfinite(got) and got > 0
    same = frechet_distance(a.mean(0), np.cov(a, rowvar=False), a.mean(0), np.cov(a, rowvar=False))
    assert abs(same) < 1e-4
    # the eigendecomposition route needs no offset and agrees
    eig = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False), method="eigen")
    assert eig == pytest.approx(got, rel=1e-4)
    assert _reference_fid(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)) == \
        pytest.approx(eig, rel=1e-4)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_running_stats_match_numpy_over_uneven_batches():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(503, 12)) * 3 + 1e4  # a large mean: naive sums would lose precision
    stats = RunningStats(12)
    for chunk in np.array_split(x, [1, 8, 100, 101, 350]):
        stats.update(chunk)
    assert stats.count == 503
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="2 samples"):
        _ = RunningStats(3).cov


def test_block_counts_of_the_paper_on_scaled_sizes():
    # 1024x1024 and 1024x4096 with 256 blocks at stride 128, scaled down by 16
    assert count_blocks(64, 64, 16, 8) == 49
    assert count_blocks(64, 256, 16, 8) == 217
    img = np.arange(64 * 256 * 3, dtype=np.int32).reshape(64, 256, 3)
    blocks = list(iter_blocks(img, 16, 8))
    assert len(blocks) == 217 and all(b.shape == (16, 16, 3) for b in blocks)
    # every pixel is covered, and block (row 1, column 2) is the pixels at (8, 16)
    covered = np.zeros((64, 256), bool)
    for y, x in block_grid(64, 256, 16, 8):
        covered[y:y + 16, x:x + 16] = True
    assert covered.all()
    np.testing.assert_array_equal(blocks[1 * 31 + 2], img[8:24, 16:32])


def test_block_counts_at_the_real_sizes_without_copies():
    for h, w, n in ((1024, 1024, 49), (1024, 4096, 217)):
        img = np.zeros((h, w, 3), np.uint8)
        blocks = list(iter_blocks(img, 256, 128))
        assert len(blocks) == n == count_blocks(h, w, 256, 128)
        assert all(b.shape == (256, 256, 3) and np.shares_memory(b, img) for b in blocks)


def test_block_offsets_cover_the_far_edge_and_reject_small_images():
    assert block_offsets(300, 256, 128) == [0, 44]
    assert block_offsets(256, 256, 128) == [0]
    with pytest.raises(ValueError, match="shorter"):
        block_offsets(200, 256, 128)


def test_inception_score_of_uniform_one_hot_predictions_is_k():
    k = 7
    probs = np.eye(k)[np.arange(10 * k) % k]  # each of the 10 splits holds every class once
    mean, std, splits = inception_score(probs, splits=10)
    assert splits == 10
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-12)
    assert inception_score(probs, splits=1)[0] == pytest.approx(k)


def test_inception_score_of_identical_predictions_is_one():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(20))
    mean, _, _ = inception_score(np.tile(p, (50, 1)), splits=5)
    assert mean == pytest.approx(1.0)


def test_inception_score_from_logits_and_known_mixture():
    # half the items certain of class 0, half of class 1: IS = exp(log 2) = 2
    logits = np.zeros((40, 5))
    logits[::2, 0] = 60.0
    logits[1::2, 1] = 60.0
    assert inception_score_from_logits(logits, splits=4)[0] == pytest.approx(2.0, rel=1e-6)
    # fewer items than splits: splits shrink to the number of items
    assert inception_score_from_logits(logits[:3], splits=10)[2] == 3
    with pytest.raises(ValueError, match="probability"):
        inception_score(np.full((4, 3), 0.5))


class _FlakySqrtm:
    """scipy.linalg stand-in whose first sqrtm fails (non-finite) and later ones are exact."""

    def __init__(self, imag=0.0):
        self.calls = 0
        self.imag = imag

    def sqrtm(self, a):
        self.calls += 1
        if self.calls == 1 and not self.imag:
            return np.full_like(a, np.nan)
        return linalg.sqrtm(a) + 1j * self.imag * np.eye(len(a))


def test_frechet_distance_eps_offset_fallback(monkeypatch, caplog):
    import pipeline.evaluation.metrics.fid as fid

    rng = np.random.default_rng(5)
    mu1, s1 = _random_stats(rng, 8, 50)
    mu2, s2 = _random_stats(rng, 8, 50)
    flaky = _FlakySqrtm()
    monkeypatch.setattr(fid, "linalg", flaky)
    with caplog.at_level("WARNING"):
        got = fid.frechet_distance(mu1, s1, mu2, s2, eps=1e-6)
    assert flaky.calls == 2 and "diagonal" in caplog.text
    assert got == pytest.approx(_reference_fid(mu1, s1, mu2, s2), rel=1e-4)


def test_frechet_distance_rejects_a_large_imaginary_component(monkeypatch):
    import pipeline.evaluation.metrics.fid as fid

    rng = np.random.default_rng(6)
    mu, s = _random_stats(rng, 4, 30)
    # a "covariance" with negative eigenvalues has a genuinely complex square root
    with pytest.raises(ValueError, match="imaginary"):
        fid.frechet_distance(mu, s, mu, -s)
    with pytest.raises(ValueError, match="negative eigenvalue"):
        fid.frechet_distance(mu, s, mu, -s, method="eigen")
    monkeypatch.setattr(fid, "linalg", _FlakySqrtm(imag=1e-7))  # negligible noise: dropped
    assert abs(fid.frechet_distance(mu, s, mu, s)) < 1e-6


def test_inception_score_survives_extremely_confident_logits():
    # differences of ~1000 between logits: the other classes' probabilities underflow to 0
    logits = np.zeros((36, 4))
    logits[np.arange(36), np.arange(36) % 3] = 1000.0
    mean, std, _ = inception_score_from_logits(logits, splits=3)
    assert mean == pytest.approx(3.0) and np.isfinite(std)
    logits[0, 3] = 256.0  # p = exp(-744), a denormal: its mean over the split underflows to 0
    assert np.isfinite(inception_score_from_logits(logits, splits=3)[0])


def test_inception_score_with_n_not_divisible_by_splits_uses_every_item():
    # 7 items in 3 splits: parts [0, 2), [2, 4), [4, 7) as in the original implementation. The last
    # item is the only one of class 2; dropping it (7 // 3 * 3 = 6 items) would give a different value.
    logits = np.full((7, 3), -60.0)
    logits[[0, 2, 4], 0] = 60.0
    logits[[1, 3, 5], 1] = 60.0
    logits[6, 2] = 60.0
    mean, std, splits = inception_score_from_logits(logits, splits=3)
    # parts 1 and 2 hold classes {0, 1} once each (IS 2), part 3 holds {0, 1, 2} once each (IS 3)
    assert splits == 3
    assert mean == pytest.approx((2 + 2 + 3) / 3, rel=1e-9)
    assert std == pytest.approx(np.std([2.0, 2.0, 3.0]), rel=1e-9)
    # and every item is in exactly one part: with one split the score is that of all 7 items
    p_y = np.array([3, 3, 1]) / 7
    assert inception_score_from_logits(logits, splits=1)[0] == pytest.approx(np.exp(-(p_y * np.log(p_y)).sum()))
