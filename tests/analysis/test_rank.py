"""Numerical rank (both conventions), effective and stable rank against constructed matrices with known spectra."""

import pytest
import torch

from exitlab.analysis.rank import (
    covariance_rank,
    matrix_rank_stats,
    rank_profile,
    singular_threshold,
    singular_values,
    spectrum_stats,
)
from exitlab.errors import ExitlabError
from exitlab.models import build_model


def _low_rank(n: int, d: int, svals: list[float], seed: int = 0) -> torch.Tensor:
    """An n x d matrix with centred columns and exactly the singular values ``svals``."""
    g = torch.Generator().manual_seed(seed)
    r = len(svals)
    u = torch.randn(n, r, generator=g, dtype=torch.float64)
    u = torch.linalg.qr(u - u.mean(0))[0]  # orthonormal and orthogonal to the ones vector: centring keeps it
    v = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
    return (u * torch.tensor(svals, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_rank_of_low_rank_matrix_with_noise_below_tau(method):
    a = _low_rank(200, 50, [10.0 - i for i in range(7)])
    noise = 1e-5 * torch.randn(200, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # largest noise singular value ~ 1e-5 * (sqrt(200) + sqrt(50)) = 2e-4, far below tau * s_max = 1e-2
    stats = matrix_rank_stats((a + noise).float(), tau=1e-3, method=method)
    assert stats["rank"] == 7 == stats["rank_singular"] == stats["rank_covariance"]
    assert not stats["saturated"]


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_rank_of_low_rank_matrix_with_noise_above_tau_is_full(method):
    a = _low_rank(200, 50, [10.0 - i for i in range(7)])
    noise = 1e-2 * torch.randn(200, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # smallest noise singular value ~ 1e-2 * (sqrt(200) - sqrt(50)) = 0.07 > tau * s_max = 1e-2: every direction counts
    stats = matrix_rank_stats((a + noise).float(), tau=1e-3, convention="singular", method=method)
    assert stats["rank"] == 50 == stats["ceiling"]
    assert stats["saturated"]
    # on eigenvalues the same tau asks for s_i > 0.032 s_1 = 0.32: the noise (0.07-0.21) no longer counts
    assert matrix_rank_stats((a + noise).float(), tau=1e-3, method=method)["rank"] == 7


def test_rank_counts_singular_values_straddling_the_threshold():
    a = _low_rank(300, 80, [1.0, 0.5, 0.1, 2e-3, 1.2e-3, 8e-4, 5e-4])
    assert matrix_rank_stats(a, tau=1e-3, convention="singular")["rank"] == 5  # 1.2e-3 > 1e-3 > 8e-4
    assert matrix_rank_stats(a, tau=1e-2, convention="singular")["rank"] == 3


# the spectrum where the two conventions part: s_i / s_1 around sqrt(1e-3) = 0.0316 and around 1e-3
SVALS = [1.0, 0.5, 0.1, 0.05, 0.02, 0.01, 5e-3, 2e-3, 5e-4, 2e-4]


def test_the_two_conventions_differ_by_the_square_of_tau():
    a = _low_rank(400, 60, SVALS)
    stats = matrix_rank_stats(a, tau=1e-3)  # default: covariance eigenvalues > 1e-3 lambda_max
    assert stats["rank"] == stats["rank_covariance"] == 4  # s > 0.0316: 1, 0.5, 0.1, 0.05
    assert stats["rank_singular"] == 8  # s > 1e-3: all but 5e-4 and 2e-4
    assert matrix_rank_stats(a, tau=1e-3, convention="singular")["rank"] == 8
    assert singular_threshold(1e-3) == pytest.approx(0.0316, abs=1e-4)
    for tau in (0.5, 0.05, 1e-3, 2e-4, 1e-5, 1e-6):  # none on a squared singular value
        cov = matrix_rank_stats(a, tau=tau)["rank_covariance"]
        assert cov == matrix_rank_stats(a, tau=tau ** 0.5, convention="singular")["rank"]
        assert cov == covariance_rank(a, tau)  # torch.linalg.matrix_rank(cov, hermitian=True, rtol=tau)
        assert cov == sum(s * s > tau for s in SVALS)
    with pytest.raises(ExitlabError, match="convention must be one of"):
        matrix_rank_stats(a, convention="eigen")


def test_covariance_rank_of_wide_features_matches_the_reference_code_form():
    # D > N: the D x D covariance has at most N - 1 nonzero eigenvalues, found from the N x N side here
    a = _low_rank(80, 300, SVALS[:7]) + 1e-7 * torch.randn(80, 300, generator=torch.Generator().manual_seed(2),
                                                             dtype=torch.float64)
    for tau in (1e-2, 1e-3, 1e-4):
        assert matrix_rank_stats(a.float(), tau=tau)["rank"] == covariance_rank(a.float(), tau)


def test_spectrum_is_the_normalised_singular_values():
    a = _low_rank(400, 60, SVALS)
    stats = matrix_rank_stats(a, tau=1e-3)
    assert stats["spectrum_index"] == list(range(1, 61))
    assert stats["spectrum"][:10] == pytest.approx([s / SVALS[0] for s in SVALS], rel=1e-6, abs=1e-12)
    assert max(stats["spectrum"][10:]) < 1e-6  # the Gram route resolves ~sqrt(m eps) = 1e-7
    big = matrix_rank_stats(torch.randn(600, 500, generator=torch.Generator().manual_seed(0)), tau=1e-3)
    assert len(big["spectrum"]) <= 200 and big["spectrum_index"][0] == 1 and big["spectrum_index"][-1] == 500
    assert big["spectrum"][0] == 1.0 and big["spectrum"] == sorted(big["spectrum"], reverse=True)


def test_gram_and_svd_routes_agree_and_auto_picks_svd_for_tiny_tau():
    a = torch.randn(120, 300, generator=torch.Generator().manual_seed(0)) * torch.logspace(0, -4, 300)
    s_gram, m1 = singular_values(a, method="gram")
    s_svd, m2 = singular_values(a, method="svd")
    assert (m1, m2) == ("gram", "svd")
    assert torch.allclose(s_gram, s_svd, rtol=1e-5, atol=1e-6 * float(s_svd[0]))  # float32 svdvals: ~6e-8 s_1
    s_svd64, _ = singular_values(a.double(), method="svd")
    assert torch.allclose(s_gram, s_svd64, rtol=1e-6, atol=1e-9 * float(s_svd64[0]))
    assert singular_values(a, tau=1e-7)[1] == "svd"
    assert singular_values(a, tau=1e-3)[1] == "gram"


def test_effective_and_stable_rank_known_values():
    flat = spectrum_stats(torch.ones(6, dtype=torch.float64))
    assert flat["effective_rank"] == pytest.approx(6.0)
    assert flat["stable_rank"] == pytest.approx(6.0)
    two = spectrum_stats(torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert two["stable_rank"] == pytest.approx(1.25)
    p = torch.tensor([2 / 3, 1 / 3])
    assert two["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))


def test_too_few_samples_is_an_error():
    with pytest.raises(ExitlabError, match="at least 10 samples"):
        matrix_rank_stats(torch.randn(5, 20))


def _tiny_model():
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[0, 1])


def test_rank_profile_records_subsampling_and_ceiling():
    model = _tiny_model()
    batches = [(torch.randn(16, 1, 16, 16), torch.randint(0, 7, (16,))) for _ in range(2)]
    prof = rank_profile(model, batches, max_features=100)
    assert prof["blocks"] == [0, 1, 2]
    assert prof["features"] == [16 * 16 * 16, 32 * 8 * 8, 64 * 4 * 4]
    assert prof["features_used"] == [100, 100, 100]
    assert prof["ceiling"] == [31, 31, 31]  # 32 samples, centred
    assert prof["convention"] == "covariance" and prof["singular_threshold"] == pytest.approx(1e-3 ** 0.5)
    assert all(c <= s for c, s in zip(prof["rank_covariance"], prof["rank_singular"]))
    assert [len(v) for v in prof["spectrum"]] == [32, 32, 32] and all(v[0] == 1.0 for v in prof["spectrum"])
    assert all(r <= c for r, c in zip(prof["rank"], prof["ceiling"]))
    assert model.training  # modes restored
    pooled = rank_profile(model, batches, pool=1)  # global average: one feature per channel
    assert pooled["features"] == [16, 32, 64] and pooled["pool"] == 1
    assert all(r <= c for r, c in zip(pooled["rank"], [16, 31, 31]))


def test_rank_profile_rejects_a_missing_block():
    with pytest.raises(ExitlabError, match="block 7 does not exist"):
        rank_profile(_tiny_model(), [(torch.randn(12, 1, 16, 16), torch.zeros(12, dtype=torch.long))], blocks=[0, 7])


def test_rank_profile_of_an_adapter_includes_its_output_block():
    from torch import nn

    from exitlab.models import from_module

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    model = from_module(net, ["1", "3"], num_classes=5, input_shape=(1, 8, 8))
    prof = rank_profile(model, [(torch.randn(40, 1, 8, 8), torch.randint(0, 5, (40,)))])
    assert prof["blocks"] == [0, 1, 2] and prof["features"] == [256, 256, 5]  # block 2: the model's logits
    assert prof["rank"][2] <= 5
