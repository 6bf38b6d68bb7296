"""PyDESeq2's per-gene solvers, batched over genes with NumPy.

PyDESeq2 fits every gene with its own SciPy call (IRLS for the GLM coefficients,
L-BFGS-B for the dispersion) through joblib: at tens of thousands of genes and
hundreds of donors, the overhead of those calls costs more than twice the arithmetic
(``bench/results/de.md``: 119 vs 32 CPU s for 35 k genes at 981 donors).
:class:`BatchedInference` is a :class:`pydeseq2.default_inference.DefaultInference`
whose ``irls``, ``alpha_mle`` and ``wald_test`` solve the same problems for blocks
of :data:`BLOCK_GENES` genes at once; the rest of DESeq2 (size factors, dispersion
trend and prior, Cook's distances and refit, independent filtering) is PyDESeq2's
own code.

- ``irls``: the iterations of :func:`pydeseq2.utils.irls_solver` (its start, ridge,
  stopping rule on the deviance and hat diagonals), on all genes of a block
  together. A gene whose coefficients leave ``[-max_beta, max_beta]``, or that
  reaches ``maxiter``, is refitted by ``irls_solver`` itself (its L-BFGS-B branch).
- ``alpha_mle``: the minimum of the objective of
  :func:`pydeseq2.utils.fit_alpha_mle` (negative-binomial likelihood, Cox-Reid
  term, and the log-normal prior of the MAP step) over ``log(alpha)`` in
  ``[log(min_disp), log(max_disp)]``: from PyDESeq2's starting value downhill
  (steps of 1, 2, 4, ...) until the gradient changes sign, then regula falsi
  (Illinois) on the gradient until the bracket is :data:`LOG_ALPHA_TOL` wide; a
  bound where the gradient keeps its sign. A gene not settled in
  :data:`MAX_ALPHA_ITER` steps is fitted by ``fit_alpha_mle`` itself.
- ``wald_test``: PyDESeq2's formulas (two-sided; other alternatives go to
  PyDESeq2).

L-BFGS-B stops on a small relative change of the objective, a little short of the
optimum; the batched fit lands on it, so dispersions differ from PyDESeq2's at
about 1e-4 (relative) and the statistics agree closely
(``tests/test_de_calibration.py`` and ``bench/results/de.md`` measure it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydeseq2 import utils
from pydeseq2.default_inference import DefaultInference
from scipy.special import digamma, gammaln
from scipy.stats import norm

#: Genes per block of the batched solvers: bounds their working memory to a few
#: (samples x block) float64 arrays (1,000 samples: ~16 MB each).
BLOCK_GENES = 2048
#: Tolerance on log(dispersion) of the batched dispersion fit: a gene is settled when
#: its latest or next step is shorter. PyDESeq2's L-BFGS-B stops on a relative change
#: of the objective of 2.2e-9, typically 1e-4 to 1e-3 short of the optimum.
LOG_ALPHA_TOL = 1e-6
#: Gradient (in log(dispersion)) small enough to stop at: L-BFGS-B's ``pgtol``, as
#: PyDESeq2 runs it. Near ``min_disp`` the objective is flat and its gradient is
#: rounding noise of about this size.
GRAD_TOL = 1e-5
#: First step of the dispersion fit, downhill from PyDESeq2's starting value (log).
PROBE = 1e-3
#: Longest step of the dispersion fit before the minimum is bracketed (log).
MAX_STEP = 3.0
#: Iterations of the batched dispersion fit after which a gene is handed to PyDESeq2.
MAX_ALPHA_ITER = 100


def _pair_products(x: np.ndarray) -> np.ndarray:
    """Return the samples x (p * p) products ``x[:, k] * x[:, l]`` of a design matrix."""
    return (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)


def _linear(x: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Return ``x @ beta`` (samples x genes); einsum beats BLAS at a few coefficients."""
    return np.einsum("np,pk->nk", x, beta)


def _gram(w: np.ndarray, pairs: np.ndarray, p: int) -> np.ndarray:
    """Return ``X^T diag(w[:, g]) X`` for every gene ``g``: genes x p x p."""
    return (w.T @ pairs).reshape(w.shape[1], p, p)


class BatchedInference(DefaultInference):
    """DESeq2's per-gene fits, batched over genes (see the module docstring).

    Parameters
    ----------
    n_cpus
        Passed to ``DefaultInference`` (its joblib workers serve the few calls
        left to PyDESeq2); 1 by default: the stage parallelises over cell types.
    """

    def __init__(self, n_cpus: int = 1) -> None:
        super().__init__(n_cpus=n_cpus)

    def irls(  # noqa: D102
        self,
        counts,
        size_factors,
        design_matrix,
        disp,
        min_mu,
        beta_tol,
        min_beta=-30,
        max_beta=30,
        optimizer="L-BFGS-B",
        maxiter=250,
    ):
        x = np.asarray(design_matrix, dtype=np.float64)
        n, p = x.shape
        if np.linalg.matrix_rank(x) != p:  # not full rank: PyDESeq2's own start
            return super().irls(
                counts,
                size_factors,
                design_matrix,
                disp,
                min_mu,
                beta_tol,
                min_beta,
                max_beta,
                optimizer,
                maxiter,
            )
        g_all = counts.shape[1]
        beta_out = np.empty((g_all, p))
        mu_out = np.empty((n, g_all))
        hat_out = np.empty((n, g_all))
        conv_out = np.ones(g_all, dtype=bool)
        sf = np.asarray(size_factors, dtype=np.float64)[:, None]
        log_sf, log_min_mu = np.log(sf), np.log(min_mu)
        q, r = np.linalg.qr(x)
        pairs = _pair_products(x)
        ridge = np.eye(p) * 1e-6
        disp = np.asarray(disp, dtype=np.float64)
        for start in range(0, g_all, BLOCK_GENES):
            cols = slice(start, min(start + BLOCK_GENES, g_all))
            y = np.asarray(counts[:, cols], dtype=np.float64)
            a = disp[cols]
            inv_a = 1.0 / a
            beta = np.linalg.solve(r, q.T @ np.log(y / sf + 0.1))  # p x genes
            const = n * inv_a * np.log(a) - (
                gammaln(y + inv_a) - gammaln(y + 1.0) - gammaln(inv_a)
            ).sum(axis=0)
            fallback = []
            # working arrays of the genes still iterating (pos: their columns)
            pos = np.arange(y.shape[1])
            yw, aw, iaw, cw, bw = y, a, inv_a, const, beta
            dev = np.full(len(pos), 1000.0)
            eta = _linear(x, bw) + log_sf
            it = 0
            while len(pos):
                it += 1
                mw = np.maximum(np.exp(eta), min_mu)
                lmw = np.maximum(eta, log_min_mu)
                den = mw * aw
                den += 1.0
                w = mw / den
                wz = w * (lmw - log_sf - 1.0)
                wz += yw / den  # w * z, z = log(mu / sf) + (y - mu) / mu
                h = _gram(w, pairs, p) + ridge
                bh = np.linalg.solve(h, (x.T @ wz).T[:, :, None])[:, :, 0].T
                ok = ~((np.abs(bh) > max_beta).any(axis=0) | (it >= maxiter))
                fallback.extend(pos[~ok])
                eta = _linear(x, bh) + log_sf
                mw = np.maximum(np.exp(eta), min_mu)
                lmw = np.maximum(eta, log_min_mu)
                ll = np.log(iaw + mw)
                ll *= yw + iaw
                lmw *= yw
                ll -= lmw
                new = -2.0 * (cw + ll.sum(axis=0))
                more = ok & (np.abs(new - dev) / (np.abs(new) + 0.1) > beta_tol)
                beta[:, pos[ok]] = bh[:, ok]
                if not more.all():
                    pos, yw, aw, iaw, cw = pos[more], yw[:, more], aw[more], iaw[more], cw[more]
                    eta, new = eta[:, more], new[more]
                dev = new
            mu = np.maximum(sf * np.exp(_linear(x, beta)), min_mu)
            w = mu / (1.0 + mu * a)
            hinv = np.linalg.inv(_gram(w, pairs, p) + ridge)
            hat = w * (pairs @ hinv.reshape(len(hinv), -1).T)
            mu_raw = sf * np.exp(_linear(x, beta))
            for j in fallback:
                b, m, hj, ok = utils.irls_solver(
                    counts=y[:, j],
                    size_factors=sf[:, 0],
                    design_matrix=x,
                    disp=a[j],
                    min_mu=min_mu,
                    beta_tol=beta_tol,
                    min_beta=min_beta,
                    max_beta=max_beta,
                    optimizer=optimizer,
                    maxiter=maxiter,
                )
                beta[:, j], mu_raw[:, j], hat[:, j] = b, m, hj
                conv_out[start + j] = ok
            beta_out[cols] = beta.T
            mu_out[:, cols] = mu_raw
            hat_out[:, cols] = hat
        return beta_out, mu_out, hat_out, conv_out

    def alpha_mle(  # noqa: D102
        self,
        counts,
        design_matrix,
        mu,
        alpha_hat,
        min_disp,
        max_disp,
        prior_disp_var=None,
        cr_reg=True,
        prior_reg=False,
        optimizer="L-BFGS-B",
    ):
        if optimizer != "L-BFGS-B" or (prior_reg and prior_disp_var is None):
            return super().alpha_mle(
                counts,
                design_matrix,
                mu,
                alpha_hat,
                min_disp,
                max_disp,
                prior_disp_var,
                cr_reg,
                prior_reg,
                optimizer,
            )
        x = np.asarray(design_matrix, dtype=np.float64)
        p = x.shape[1]
        pairs = _pair_products(x)
        lo, hi = np.log(min_disp), np.log(max_disp)
        alpha_hat = np.asarray(alpha_hat, dtype=np.float64)
        g_all = counts.shape[1]
        out = np.empty(g_all)
        conv = np.ones(g_all, dtype=bool)
        for start in range(0, g_all, BLOCK_GENES):
            cols = slice(start, min(start + BLOCK_GENES, g_all))
            y = np.asarray(counts[:, cols], dtype=np.float64)
            m = np.asarray(mu[:, cols], dtype=np.float64)
            x_hat = np.log(alpha_hat[cols])

            def grad(la, idx, y=y, m=m, x_hat=x_hat):
                a = np.exp(la)
                ia = 1.0 / a
                yt, mt = y[:, idx], m[:, idx]
                ll = (
                    digamma(ia) - digamma(yt + ia) + np.log1p(mt * a) + (yt - mt) / (mt + ia)
                ).sum(axis=0)
                g = -a * ia**2 * ll
                if cr_reg:
                    w = mt / (1.0 + mt * a)
                    gram = _gram(w, pairs, p)
                    dgram = _gram(w * w, pairs, p)
                    tr = np.trace(np.linalg.solve(gram, dgram), axis1=1, axis2=2)
                    g = g - 0.5 * a * tr
                if prior_reg:
                    g = g + (la - x_hat[idx]) / prior_disp_var
                return g

            out[cols], ok = _min_log_alpha(grad, np.clip(x_hat, lo, hi), lo, hi)
            for j in np.flatnonzero(~ok):
                out[start + j], conv[start + j] = utils.fit_alpha_mle(
                    counts=y[:, j],
                    design_matrix=x,
                    mu=m[:, j],
                    alpha_hat=alpha_hat[start + j],
                    min_disp=min_disp,
                    max_disp=max_disp,
                    prior_disp_var=prior_disp_var,
                    cr_reg=cr_reg,
                    prior_reg=prior_reg,
                    optimizer=optimizer,
                )
                out[start + j] = np.log(out[start + j])
        return np.exp(out), conv

    def wald_test(  # noqa: D102
        self,
        design_matrix,
        disp,
        lfc,
        mu,
        ridge_factor,
        contrast,
        lfc_null,
        alt_hypothesis=None,
    ):
        if alt_hypothesis is not None:
            return super().wald_test(
                design_matrix,
                disp,
                lfc,
                mu,
                ridge_factor,
                contrast,
                lfc_null,
                alt_hypothesis,
            )
        x = np.asarray(design_matrix, dtype=np.float64)
        p = x.shape[1]
        pairs = _pair_products(x)
        w = mu / (1.0 + mu * np.asarray(disp, dtype=np.float64)[None, :])
        m = _gram(w, pairs, p)
        hc = np.linalg.inv(m + ridge_factor) @ np.asarray(contrast, dtype=np.float64)
        se = np.sqrt(np.einsum("gk,gkl,gl->g", hc, m, hc))
        stat = (np.asarray(lfc) - lfc_null) @ contrast / se
        return 2.0 * norm.sf(np.abs(stat)), stat, se


def _min_log_alpha(
    grad: Any, x0: np.ndarray, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise a 1-D objective per gene from its gradient, within ``[lo, hi]``.

    Secant steps on the gradient (Newton's method with the slope of the last two
    points), the first from a probe :data:`PROBE` downhill of ``x0``. Until the
    gradient has changed sign, a step goes downhill and at most
    :data:`MAX_STEP` long (a bound where the gradient keeps pushing outwards is the
    answer); once it has, steps stay inside the bracket, and a bisection replaces
    a step that would leave it or would not be shorter than half the step before
    the last (Brent's rule). A gene is settled when its gradient is at most
    :data:`GRAD_TOL`, or its latest step, or once bracketed its next step, is
    shorter than :data:`LOG_ALPHA_TOL`.

    Parameters
    ----------
    grad
        ``grad(x, idx)``: the gradient at ``x[i]`` of gene ``idx[i]``.
    x0, lo, hi
        Starting points and bounds.

    Returns
    -------
    x : ndarray
        The minimisers.
    settled : ndarray of bool
        False where the gradient was NaN or :data:`MAX_ALPHA_ITER` steps did not
        settle the gene.
    """
    n = len(x0)
    every = np.arange(n)
    xc, gc = x0.astype(np.float64), grad(x0, every)
    x = xc.copy()
    settled = np.abs(gc) <= GRAD_TOL
    failed = np.isnan(gc)
    a, b = np.full(n, lo), np.full(n, hi)  # the bracket; known: g(a) < 0 < g(b)
    a_known = np.zeros(n, dtype=bool)
    b_known = np.zeros(n, dtype=bool)
    xp, gp = xc.copy(), gc.copy()
    last = np.full(n, np.inf)  # the step before the latest one
    first = True
    for _ in range(MAX_ALPHA_ITER):
        idx = np.flatnonzero(~settled & ~failed)
        if not len(idx):
            break
        xi, gi = xc[idx], gc[idx]
        ai, bi = a[idx], b[idx]
        down = -np.sign(gi)
        if first:
            t = xi + down * PROBE
            first = False
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                slope = (gi - gp[idx]) / (xi - xp[idx])
                newton = xi - gi / slope
            ok = (slope > 0) & np.isfinite(newton)
            bracketed = a_known[idx] & b_known[idx]
            # not bracketed yet: downhill, at most MAX_STEP
            free = np.where(ok, np.clip(newton - xi, -MAX_STEP, MAX_STEP), down * MAX_STEP)
            t_free = xi + free
            # bracketed: Brent's rule
            inside = ok & (newton > ai) & (newton < bi)
            inside &= np.abs(newton - xi) <= 0.5 * last[idx]
            t_brk = np.where(inside, newton, 0.5 * (ai + bi))
            t = np.where(bracketed, t_brk, t_free)
        t = np.clip(t, ai, bi)
        gt = grad(t, idx)
        # Brent's rule counts steps from the first one inside a bracket
        last[idx] = np.where(a_known[idx] & b_known[idx], np.abs(xi - xp[idx]), np.inf)
        xp[idx], gp[idx] = xi, gi
        xc[idx], gc[idx] = t, gt
        neg, pos = gt < 0, gt > 0
        a[idx[neg]], a_known[idx[neg]] = t[neg], True
        b[idx[pos]], b_known[idx[pos]] = t[pos], True
        edge = ((t <= lo) & pos) | ((t >= hi) & neg)  # pushing outwards at a bound
        with np.errstate(divide="ignore", invalid="ignore"):
            ahead = np.abs(gt * (t - xi) / (gt - gi))  # the next secant step's length
        done = edge | (np.abs(gt) <= GRAD_TOL) | (np.abs(t - xi) < LOG_ALPHA_TOL)
        done |= (ahead < LOG_ALPHA_TOL) & (a_known[idx] & b_known[idx])
        done |= (b[idx] - a[idx]) < LOG_ALPHA_TOL
        nan = np.isnan(gt)
        x[idx[done & ~nan]] = t[done & ~nan]
        settled[idx[done & ~nan]] = True
        failed[idx[nan]] = True
    x[settled & ~np.isfinite(x)] = x0[settled & ~np.isfinite(x)]
    return x, settled & ~failed
