"""Stage III sampler on an analytic flow: SDE/ODE marginals, candidate selection, the pair search."""
import numpy as np
import pytest
import torch

from reangle.inpaint.flow import clean_estimate, ode_step, sde_step
from reangle.inpaint.reward import guard_overlap
from reangle.inpaint.search import Ranks, guided_sample, mean_of_terms, select_best, slices


def gaussian_velocity(mean, std):
    """Exact model output u = E[noise - x0 | x_sigma] for data N(mean, std^2) (per element) and noise N(0, 1)."""
    def velocity(x, sigma):
        var = (1 - sigma) ** 2 * std ** 2 + sigma ** 2
        centred = x - (1 - sigma) * mean
        return sigma * centred / var - (mean + (1 - sigma) * std ** 2 * centred / var)
    return velocity


def uniform_sigmas(steps):
    return torch.linspace(1, 0, steps + 1).tolist()


class AnalyticModel:
    """The analytic flow behind the search interface; ``score`` is supplied per test."""

    def __init__(self, velocity, score=None):
        self.u, self._score, self.tables = velocity, score, []

    def velocity(self, k, latents, sigma):
        return self.u(latents, sigma)

    def decode(self, k, clean):
        return clean

    def score(self, decoded):
        """One score term: the table itself (B_1, ..., B_K, 1)."""
        table = self._score(decoded)
        self.tables.append((table, [d.clone() for d in decoded]))
        return table[..., None]


def propagate_moments(step, mean, var, sigmas, velocity):
    """Exact mean/variance through affine steps ``x' = a x + b + c xi`` (a, b, c read off ``step``)."""
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        last = i == len(sigmas) - 2

        def apply(x, xi):
            u = velocity(x, s)
            return ode_step(x, u, s, s_next) if last or step == "ode" else sde_step(x, u, s, s_next, xi)

        b = apply(zero, zero)
        a = apply(one, zero) - b
        c = apply(zero, one) - b
        mean, var = a * mean + b, a ** 2 * var + c ** 2
    return float(mean), float(var.sqrt())


@pytest.mark.parametrize("step", ["sde", "ode"])
def test_steps_keep_the_data_distribution_exactly_propagated(step):
    data_mean, data_std = 1.5, 0.4
    velocity = gaussian_velocity(data_mean, data_std)
    # Start at the exact marginal at sigma = 1 (standard normal); Euler error is O(1 / steps).
    mean, std = propagate_moments(step, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                                  uniform_sigmas(400), velocity)
    assert abs(mean - data_mean) < 0.01 and abs(std - data_std) < 0.01, (mean, std)


def test_sde_intermediate_marginals_match_the_linear_path():
    """At every sigma the SDE keeps the marginal N((1 - sigma) m, (1 - sigma)^2 s^2 + sigma^2) (to O(1/steps))."""
    m, s = -0.7, 0.3
    velocity = gaussian_velocity(m, s)
    sigmas = uniform_sigmas(400)
    for stop in (100, 200, 300):
        sub = sigmas[: stop + 1] + [0.0]  # ends with a deterministic step to 0: compare before it
        mean, var = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        for a_, b_ in zip(sub[:stop], sub[1:stop + 1]):
            x0, x1 = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
            b = sde_step(x0, velocity(x0, a_), a_, b_, x0)
            a = sde_step(x1, velocity(x1, a_), a_, b_, x0) - b
            c = sde_step(x0, velocity(x0, a_), a_, b_, x1) - b
            mean, var = a * mean + b, a ** 2 * var + c ** 2
        sig = sub[stop]
        assert abs(float(mean) - (1 - sig) * m) < 0.01
        assert abs(float(var) - ((1 - sig) ** 2 * s ** 2 + sig ** 2)) < 0.01


@pytest.mark.parametrize("stochastic", [True, False])
def test_particles_reach_the_data_mean_and_std(stochastic):
    """10^5 particles of 2-D Gaussian data through the unguided sampler (S = 1): mean/std within 0.03."""
    mean = torch.tensor([1.0, -2.0])
    std = torch.tensor([0.5, 1.5])
    model = AnalyticModel(gaussian_velocity(mean, std))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((1, 100_000, 2), generator=gen)
    out = guided_sample(model, [noise], uniform_sigmas(200), 1, gen, stochastic=stochastic).latents[0][0]
    torch.testing.assert_close(out.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(out.std(0), std, atol=0.03, rtol=0)


def test_one_candidate_is_the_plain_sde_sampler_and_costs_one_call_per_step():
    velocity = gaussian_velocity(0.5, 0.8)
    sigmas = uniform_sigmas(10)
    x = torch.randn((1, 4, 3), generator=torch.Generator().manual_seed(1))
    result = guided_sample(AnalyticModel(velocity), [x], sigmas, 1, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    ref = x.clone()
    for i in range(10):
        u = velocity(ref, sigmas[i])
        ref = ode_step(ref, u, sigmas[i], 0.0) if i == 9 else sde_step(ref, u, sigmas[i], sigmas[i + 1],
                                                                          torch.randn((1, 4, 3), generator=gen))
    torch.testing.assert_close(result.latents[0], ref, rtol=0, atol=0)
    assert result.model_calls == 10


def test_candidate_model_outputs_are_reused():
    calls = []
    velocity = gaussian_velocity(0.0, 1.0)

    def counting(x, sigma):
        calls.append(x.shape[0])
        return velocity(x, sigma)

    model = AnalyticModel(counting, score=lambda d: d[0].flatten(1).norm(dim=1))
    result = guided_sample(model, [torch.zeros(1, 3)], uniform_sigmas(6), 5, torch.Generator().manual_seed(0))
    assert sum(calls) == result.model_calls == 1 + 5 * (6 - 1)


def test_reward_towards_a_known_target_pulls_the_sample_there():
    target = torch.tensor([2.0, -1.5])
    velocity = gaussian_velocity(torch.zeros(2), torch.ones(2))

    def final_distance(candidates, seed):
        model = AnalyticModel(velocity, score=lambda d: (d[0].view(d[0].shape[0], 2) - target).norm(dim=1))
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((1, 2), generator=gen)
        out = guided_sample(model, [x], uniform_sigmas(20), candidates, gen).latents[0][0]
        return float((out - target).norm())

    guided = np.mean([final_distance(16, s) for s in range(8)])
    plain = np.mean([final_distance(1, s) for s in range(8)])
    assert guided < 0.5 * plain and guided < 1.0, (guided, plain)


def test_first_pair_search_takes_the_argmin_of_the_table():
    """u = 0: a candidate is its own clean estimate and the final latents are the last chosen pair."""
    w = torch.randn(3, generator=torch.Generator().manual_seed(3))
    model = AnalyticModel(lambda x, s: torch.zeros_like(x),
                          score=lambda d: (d[0] @ w)[:, None] * (d[1] @ w)[None, :] + d[1].sum(1)[None, :])
    result = guided_sample(model, [torch.zeros(1, 3), torch.ones(1, 3)], uniform_sigmas(5), 4,
                           torch.Generator().manual_seed(0))
    table, (first, second) = model.tables[-1]
    i, j = np.unravel_index(np.argmin(table.numpy()), table.shape)
    torch.testing.assert_close(result.latents[0][0], first[i])
    torch.testing.assert_close(result.latents[1][0], second[j])
    assert table.shape == (4, 4) and result.scores[-1] == pytest.approx(float(table.min()))
    for tab, _ in model.tables:
        assert select_best(tab)[0] == np.unravel_index(np.argmin(tab.numpy()), tab.shape)


def test_a_candidate_without_overlap_is_never_chosen():
    """Candidate scores raw 0 (MEt3R's value without overlap) for the first coordinate < 0: the guard rejects them."""
    def score(d):
        x = d[0][:, 0]
        raw = torch.where(x < 0, torch.zeros_like(x), 1 + x.abs())
        overlap = (x >= 0).float()
        return guard_overlap(raw, overlap, min_overlap=0.5)

    model = AnalyticModel(lambda x, s: torch.zeros_like(x), score=score)
    guided_sample(model, [torch.zeros(1, 2)], uniform_sigmas(8), 6, torch.Generator().manual_seed(2))
    mixed = 0
    for table, (decoded,) in model.tables:
        mixed += bool((decoded[:, 0] < 0).any() and (decoded[:, 0] >= 0).any())
        (j,), _ = select_best(table)
        assert decoded[j, 0] >= 0
    assert mixed >= 3  # steps where a lower-scoring candidate without overlap was on offer


def test_select_best_treats_nan_as_worst_and_slices_cover_every_candidate():
    assert select_best(torch.tensor([float("nan"), 0.3, 0.1]))[0] == (2,)
    for count, world in [(25, 2), (25, 3), (4, 4), (3, 2)]:
        parts = slices(count, world)
        assert [i for p in parts for i in p] == list(range(count))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_clean_estimate_inverts_the_interpolation():
    x0, noise = torch.randn(5), torch.randn(5)
    sigma = 0.3
    xt = (1 - sigma) * x0 + sigma * noise
    torch.testing.assert_close(clean_estimate(xt, noise - x0, sigma), x0)


def test_sigmas_must_end_at_zero():
    with pytest.raises(ValueError, match="ending at 0"):
        guided_sample(AnalyticModel(lambda x, s: x), [torch.zeros(1, 1)], [1.0, 0.5], 1, torch.Generator())


class ThreadRanks(Ranks):
    """``world_size`` ranks as threads exchanging through shared slots (stands in for torch.distributed)."""

    def __init__(self, rank, world_size, shared):
        self.rank, self.world_size, self.shared = rank, world_size, shared

    def _exchange(self, value):
        slots, barrier = self.shared
        slots[self.rank] = value
        barrier.wait()
        values = list(slots)
        barrier.wait()
        return values

    def gather(self, local):
        return torch.cat(self._exchange(local))

    def broadcast(self, tensor, src, like):
        return self._exchange(tensor)[src].clone()


# float32 scores of the same candidate computed in batches of other sizes sum in other orders
# (BLAS / cuBLAS kernels are chosen by shape): measured up to 2.8e-6 relative, ~24 float32 ulps.
FLOAT32_BATCH_RTOL = 1e-5
ULP = torch.finfo(torch.float32).eps


def batch_rounding(table, batch):
    """``table`` as a float32 reduction over ``batch`` rows may round it: ``8 ulp`` per row, relative."""
    return table * (1 + 8 * ULP * batch)


@pytest.mark.parametrize("world_size,candidates", [(2, 5), (3, 4), (4, 2)])
def test_candidates_split_over_ranks_give_the_one_rank_result(world_size, candidates):
    """First pair (K = 2) and one view (K = 1); fewer candidates than ranks: every rank computes them all.

    The same choice as one rank; the scores agree up to float32 batch-composition rounding.
    """
    import threading

    w = torch.randn(3, generator=torch.Generator().manual_seed(4))
    velocity = gaussian_velocity(0.3, 0.7)

    def score(d):
        table = (d[0] @ w)[:, None] - (d[-1] @ w)[None, :] ** 2 if len(d) == 2 else (d[0] @ w) ** 2
        return batch_rounding(table, len(d[0]))

    def run(ranks, k):
        model = AnalyticModel(velocity, score=score)
        init = [torch.full((1, 3), float(i)) for i in range(k)]
        return guided_sample(model, init, uniform_sigmas(6), candidates, torch.Generator().manual_seed(9), ranks=ranks)

    for k in (1, 2):
        single = run(None, k)
        shared = ([None] * world_size, threading.Barrier(world_size))
        results = [None] * world_size

        def worker(r):
            results[r] = run(ThreadRanks(r, world_size, shared), k)

        threads = [threading.Thread(target=worker, args=(r,)) for r in range(world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for result in results:
            assert result.scores == pytest.approx(single.scores, rel=FLOAT32_BATCH_RTOL)
            for a, b in zip(result.latents, single.latents):
                torch.testing.assert_close(a, b)


class TermsModel(AnalyticModel):
    """A search scored by several terms: ``score`` returns (B, P) as MEt3R's pairs would."""

    def score(self, decoded):
        terms = self._score(decoded)
        self.tables.append((terms, [d.clone() for d in decoded]))
        return terms


def _far_reference_terms(d):
    """Term 0: a finished view every candidate overlaps (score |x|); term 1: one on the other side
    of the scene that no candidate overlaps enough (inf for all, as guard_overlap gives)."""
    near = d[0].flatten(1).norm(dim=1)
    far = guard_overlap(torch.zeros_like(near), torch.zeros_like(near), min_overlap=0.05)
    return torch.stack([near, far], dim=-1)


def test_a_reference_no_candidate_overlaps_is_left_out_and_recorded():
    """Before: the far view made every mean inf, candidate 0 was taken (guidance off) and 3.4e38 recorded."""
    model = TermsModel(lambda x, s: torch.zeros_like(x), score=_far_reference_terms)
    result = guided_sample(model, [torch.zeros(1, 3)], uniform_sigmas(6), 5, torch.Generator().manual_seed(1))
    assert result.left_out == [[1]] * 5
    for (terms, (batch,)), value in zip(model.tables, result.scores):
        assert value == pytest.approx(float(terms[:, 0].min()))       # the best candidate, not candidate 0
    assert all(np.isfinite(result.scores))


def test_a_candidate_failing_a_term_others_pass_keeps_the_guard():
    terms = torch.tensor([[0.1, float("inf")], [0.5, 0.2], [0.3, float("nan")]])
    table, left_out = mean_of_terms(terms)
    assert left_out == [] and table.tolist() == [float("inf"), pytest.approx(0.35), float("inf")]
    assert select_best(table) == ((1,), pytest.approx(0.35))


def test_select_best_keeps_inf_when_no_candidate_passes():
    table, left_out = mean_of_terms(torch.full((3, 2, 2), float("inf")))
    assert left_out == [0, 1] and torch.isinf(table).all()
    choice, value = select_best(table)
    assert choice == (0, 0) and value == float("inf")                  # scores.json writes null, not 3.4e38
    assert select_best(torch.tensor([float("inf"), float("nan")])) == ((0,), float("inf"))
