"""The PCA baseline of the compressor (seed 001): fitted on the training tokens only, centred on their mean, and
equal to the rank-k reconstruction computed by hand with an SVD. The data has a mean far from zero and the
held-out tokens a spectrum of their own, so fitting on the wrong split or forgetting the mean shows."""

import torch

from trmlab.models.compressor import fit_pca, pca_reconstruction, reconstruction_metrics

D, K = 12, 3


def tokens(n, seed, scales, mean):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed + 100)))
    return (torch.randn(n, D, generator=g, dtype=torch.float64) * scales) @ basis.t().double() + mean


def split():
    mean = torch.linspace(3.0, 8.0, D, dtype=torch.float64)
    train = tokens(3000, 0, torch.logspace(0.5, -1.0, D, dtype=torch.float64), mean)
    test = tokens(800, 1, torch.logspace(0.3, -0.5, D, dtype=torch.float64), mean + 0.5)  # other axes, other scales
    return train, test


def by_hand(train, test, k):
    """mean + P_k (x - mean), P_k from the SVD of the centred training tokens."""
    mu = train.mean(0)
    _, _, vt = torch.linalg.svd(train - mu, full_matrices=False)
    v = vt[:k]
    return ((test - mu) @ v.t()) @ v + mu


def test_pca_is_fitted_on_the_training_tokens_and_centred_on_their_mean():
    train, test = split()
    pca = fit_pca(train)
    torch.testing.assert_close(pca.mean, train.mean(0))
    torch.testing.assert_close(pca.reconstruct(test, K), by_hand(train, test, K))
    got = pca_reconstruction(train, test, K)
    want = reconstruction_metrics(test, by_hand(train, test, K))
    for name in ("mse", "cosine_similarity", "relative_error", "variance_ratio"):
        assert abs(got[name] - want[name]) <= 1e-9 * max(1.0, abs(want[name])), name
    # the test split's own PCA reconstructs it better: the figure above is a held-out one
    assert reconstruction_metrics(test, by_hand(test, test, K))["mse"] < 0.9 * got["mse"]
    # the explained variance is the training split's: the top K of its centred spectrum
    s = torch.linalg.svdvals(train - train.mean(0)) ** 2
    assert abs(got["explained_variance_ratio"] - float(s[:K].sum() / s.sum())) < 1e-9
