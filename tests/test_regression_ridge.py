"""The regression estimator's ridge chosen by generalised cross-validation (GCV)."""
import numpy as np
import pytest

import rules
from rules.regression import GCV_GRID, ridge_gradients


def _brute_force(dL, da):
    """GCV by its definition, with explicit hat matrices, then the ridge solve at the winner."""
    S, B, n = da.shape
    scores = []
    for rho in GCV_GRID:
        tot = 0.0
        for b in range(B):
            A, y = da[:, b], dL[:, b]
            lam = rho * np.trace(A @ A.T) / S
            H = A @ np.linalg.solve(A.T @ A + lam * np.eye(n), A.T)
            r = y - H @ y
            gcv = S * (r @ r) / np.trace(np.eye(S) - H) ** 2
            tot += gcv / (S * (y @ y) / S ** 2)          # relative to GCV(∞) = ‖y‖²/S
        scores.append(tot / B)
    rho = GCV_GRID[int(np.argmin(scores))]
    return rho, ridge_gradients(dL, da, float(rho))


@pytest.mark.parametrize("S", [4, 9, 15])                  # S < n, S ≈ n, S > n (n = 9)
def test_gcv_choice_and_solution_match_the_definition(S):
    rng = np.random.default_rng(S)
    B, n = 6, 9
    da = rng.standard_normal((S, B, n)) * rng.uniform(0.5, 2, (1, B, 1))
    g = rng.standard_normal((B, n))
    dL = np.einsum("sbn,bn->sb", da, g) + 2.0 * rng.standard_normal((S, B))
    rho, want = _brute_force(dL, da)
    got = ridge_gradients(dL, da, "gcv")
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
    assert GCV_GRID[0] < rho < GCV_GRID[-1]                # a real minimum, not an end of the grid


def test_more_copies_never_hurt_with_gcv_while_a_fixed_ridge_peaks():
    """δL = A g + e, n = 20 unknowns, noise as large as the signal (as in a hidden layer, where
    δL is dominated by the other layers' noise). Median relative error over 400 samples.
    Measured: ridge 1e-3: 1.03/1.19/1.70/3.49/1.91/0.99/0.57 at S = 5/10/15/20/25/40/80 (the
    peak at S = n); GCV: 0.95/0.89/0.84/0.80/0.75/0.64/0.48 — falling all the way."""
    rng = np.random.default_rng(0)
    n, B = 20, 400
    g = rng.standard_normal((B, n))
    err = {1e-3: [], "gcv": []}
    for S in (5, 10, 15, 20, 25, 40, 80):
        A = rng.standard_normal((S, B, n))
        dL = np.einsum("sbn,bn->sb", A, g) + np.sqrt(n) * rng.standard_normal((S, B))
        for ridge in err:
            e = ridge_gradients(dL, A, ridge)
            err[ridge].append(np.median(np.linalg.norm(e - g, axis=1) / np.linalg.norm(g, axis=1)))
    assert np.all(np.diff(err["gcv"]) < 0.02)               # never worse with more copies (margin 0.02)
    assert err["gcv"][3] < 0.5 * err[1e-3][3]               # at S = n: measured 0.80 vs 3.49
    assert max(err[1e-3]) == err[1e-3][3]                   # the fixed ridge's peak sits at S = n


def test_gcv_is_the_default_and_a_fixed_ridge_is_still_available():
    assert rules.make("regression").ridge == "gcv"
    assert rules.make("regression", ridge=1e-3).ridge == 1e-3
    for bad in (0, -1.0, "auto", True, float("nan")):
        with pytest.raises(ValueError, match="ridge"):
            rules.make("regression", ridge=bad)
