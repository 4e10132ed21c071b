"""The Hessian's spectral density by stochastic Lanczos quadrature (SLQ), with matfree's Lanczos.

For a symmetric ``A`` (n x n) with eigenpairs ``(lam_i, u_i)`` and a unit probe ``v``, the measure
``mu_v = sum_i (u_i . v)**2 delta(lam_i)`` has moments ``v^T A^p v``. Lanczos with ``m`` matvecs
started at ``v`` gives a tridiagonal ``T = S diag(theta) S^T``; the ``m``-node Gauss quadrature of
``mu_v`` has nodes ``theta_j`` and weights ``S_{0j}**2`` and matches its moments up to ``p = 2m-1``.
For Gaussian (then normalised) probes ``E mu_v`` is the spectral measure ``(1/n) sum_i delta(lam_i)``,
so the average over probes estimates the density of eigenvalues; a Gaussian of width ``sigma`` on
each node turns it into a curve. The top nodes are Ritz values, so an outlier eigenvalue shows up
as a node at its value with weight about ``1/n``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Spectrum", "slq", "density", "to_spectrum"]


class Spectrum(NamedTuple):
    """One step's density: ``density`` on ``grid``, the SLQ nodes and weights, and what to mark."""

    step: int
    grid: np.ndarray  # (g,)
    density: np.ndarray  # (g,) integrates to 1 over the eigenvalues
    nodes: np.ndarray  # (probes, m)
    weights: np.ndarray  # (probes, m), each row sums to 1
    edge: float  # the optimizer's edge at this step
    lambda_max: float  # the largest node (a converged Ritz value for an outlier)


def slq(matvec: Callable, n: int, key, *, num_probes: int = 8, num_matvecs: int = 40, dtype=jnp.float32):
    """Gauss quadrature nodes and weights of ``num_probes`` random probes, ``(probes, m)`` each.

    ``matvec`` maps ``(n,)`` to ``(n,)``. Probes run one after another (``lax.map``) so memory
    holds one Lanczos basis (``m x n``) at a time. Jittable.
    """
    from matfree import decomp

    m = min(num_matvecs, n)
    tridiag = decomp.tridiag_sym(m, reortho="full", materialize=True)

    def one(k):
        v = jax.random.normal(k, (n,), dtype)  # (n,)
        result = tridiag(matvec, v / jnp.linalg.norm(v))
        theta, s = jnp.linalg.eigh(result.J_small)  # (m,), (m, m)
        return theta, s[0, :] ** 2

    return jax.lax.map(one, jax.random.split(key, num_probes))


def density(nodes, weights, grid, sigma):
    """``mean_probes sum_j w_j N(x; theta_j, sigma)`` on ``grid``: ``(g,)``."""
    nodes, weights, grid = (np.asarray(a, float) for a in (nodes, weights, grid))
    z = (grid[:, None, None] - nodes[None]) / sigma  # (g, probes, m)
    return np.mean(np.sum(weights[None] * np.exp(-0.5 * z**2), axis=-1), axis=-1) / (sigma * np.sqrt(2 * np.pi))


def to_spectrum(step, nodes, weights, edge, *, points: int = 600, sigma_frac: float = 0.01) -> Spectrum:
    """A :class:`Spectrum` from SLQ nodes and weights: the density on a grid that reaches past the
    edge, each node widened by a Gaussian of ``sigma_frac`` x the spread of the nodes."""
    nodes, weights = np.asarray(nodes, float), np.asarray(weights, float)
    lo, hi = float(nodes.min()), float(nodes.max())
    sigma = sigma_frac * max(hi - lo, 1e-12)
    grid = np.linspace(lo - 5 * sigma, max(hi, float(edge)) + 5 * sigma, points)
    return Spectrum(int(step), grid, density(nodes, weights, grid, sigma), nodes, weights, float(edge), hi)
