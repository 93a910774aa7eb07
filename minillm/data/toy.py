"""Tiny 2-D classification sets for the autograd lesson: XOR and two moons."""

from __future__ import annotations

import numpy


def make_xor(n: int = 200, noise: float = 0.1, seed: int = 0) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Points around the four corners of the unit square; label = x0 XOR x1."""
    rng = numpy.random.default_rng(seed)
    corners = rng.integers(0, 2, size=(n, 2))
    X = corners * 2.0 - 1.0 + rng.normal(0, noise, size=(n, 2))
    return X.astype(numpy.float32), (corners[:, 0] ^ corners[:, 1]).astype(numpy.int64)


def make_moons(n: int = 200, noise: float = 0.1, seed: int = 0) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Two interleaving half circles (label 0 upper, 1 lower), centred and scaled to about [-1, 1]."""
    rng = numpy.random.default_rng(seed)
    n0 = n // 2
    t0 = numpy.pi * rng.random(n0)
    t1 = numpy.pi * rng.random(n - n0)
    upper = numpy.stack([numpy.cos(t0), numpy.sin(t0)], 1)
    lower = numpy.stack([1 - numpy.cos(t1), 0.5 - numpy.sin(t1)], 1)
    X = numpy.concatenate([upper, lower]) + rng.normal(0, noise, size=(n, 2))
    X = (X - numpy.array([0.5, 0.25])) / numpy.array([1.5, 0.75])
    y = numpy.concatenate([numpy.zeros(n0), numpy.ones(n - n0)]).astype(numpy.int64)
    perm = rng.permutation(n)
    return X[perm].astype(numpy.float32), y[perm]
