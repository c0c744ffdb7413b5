"""GANSpace and SeFa directions on tiny generators, checked against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clusterguide.errors import UserError
from clusterguide.evaluation.baselines import (
    Directions,
    Edit,
    edit_latents,
    first_layer_weight,
    ganspace,
    sefa,
)
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.generators.registry import load_generator


class LinearGenerator(GeneratorAdapter):
    """head(z, "lin") = z @ M: PCA and regression have closed forms."""

    name = "linear-test"
    latent_dim = 6
    image_size = 4

    def __init__(self, m: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("m", torch.tensor(m, dtype=torch.float32))

    def layer_names(self):
        return ["lin"]

    def head(self, z, layer):
        self.check_layer(layer)
        return z @ self.m

    def tail(self, h, layer):
        return torch.tanh(h[:, :1, None, None].expand(-1, 3, 4, 4))

    def synthesize(self, z):
        return self.tail(self.head(z, "lin"), "lin")


class NoLatentLayer(LinearGenerator):
    name = "no-first-layer"


@pytest.fixture(scope="module")
def tiny():
    return load_generator("tiny-dcgan")


def _unit(v):
    return v / np.linalg.norm(v)


def test_sefa_matches_the_closed_form(tiny):
    dirs = sefa(tiny, components=5)
    assert dirs.method == "sefa" and dirs.source == "weight of net.main.0"
    w = tiny.net.main[0].weight.detach().double().numpy().reshape(tiny.latent_dim, -1)  # (in, out*kh*kw)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    _, vecs = np.linalg.eigh(w @ w.T)
    for k in range(5):
        assert abs(float(dirs.vectors[k] @ vecs[:, -1 - k])) > 0.999
    assert np.all(np.diff(dirs.strengths) <= 1e-7)  # strongest first
    gram = dirs.vectors @ dirs.vectors.T
    assert np.allclose(gram, np.eye(5), atol=1e-5)


def test_sefa_first_direction_moves_the_first_layer_most(tiny):
    dirs = sefa(tiny, components=1)
    _, w = first_layer_weight(tiny)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)

    def gain(d: np.ndarray) -> float:
        return float(np.linalg.norm(d @ w))

    rng = np.random.default_rng(0)
    best_random = max(gain(_unit(rng.standard_normal(tiny.latent_dim))) for _ in range(200))
    assert gain(dirs.vectors[0].astype(np.float64)) >= best_random


def test_sefa_uses_an_adapters_own_weight():
    class Hooked(LinearGenerator):
        def sefa_weight(self):
            # three unit-norm features: two read latent axis 0, one reads axis 1 -> A A^T = 2 e0e0' + e1e1'
            w = np.zeros((6, 3))
            w[0, 0], w[0, 1], w[1, 2] = 3.0, 0.5, 2.0  # column norms differ; SeFa normalises them away
            return w

    dirs = sefa(Hooked(np.eye(6)), components=2)
    assert dirs.source == "sefa_weight()"
    assert abs(dirs.vectors[0, 0]) == pytest.approx(1.0) and abs(dirs.vectors[1, 1]) == pytest.approx(1.0)
    assert dirs.strengths[0] == pytest.approx(2 / 3) and dirs.strengths[1] == pytest.approx(1 / 3)


def test_sefa_without_a_layer_that_reads_the_latent_is_a_user_error():
    with pytest.raises(UserError, match="SeFa needs"):
        sefa(NoLatentLayer(np.eye(6)))


def test_ganspace_on_a_layer_recovers_the_top_principal_direction():
    rng = np.random.default_rng(1)
    m = rng.standard_normal((6, 6)) @ np.diag([6.0, 3.0, 1.5, 1.0, 0.5, 0.2])
    G = LinearGenerator(m)
    dirs = ganspace(G, "lin", n=3000, seed=0, components=2)
    assert dirs.source == "layer lin"
    # features y = z M have covariance M^T M; PCA coordinate x1 = y u1 = z (M u1), so the regression
    # of z on x1 points along M u1
    _, eigvecs = np.linalg.eigh(m.T @ m)
    expected = _unit(m @ eigvecs[:, -1])
    assert abs(float(dirs.vectors[0] @ expected)) > 0.99
    assert np.allclose(np.linalg.norm(dirs.vectors, axis=1), 1.0, atol=1e-5)
    assert dirs.strengths[0] > dirs.strengths[1] > 0


def test_ganspace_is_deterministic_per_seed(tiny):
    a = ganspace(tiny, "block1", n=300, seed=3, components=3)
    b = ganspace(tiny, "block1", n=300, seed=3, components=3)
    assert np.array_equal(a.vectors, b.vectors)
    assert a.vectors.shape == (3, tiny.latent_dim)


def test_ganspace_of_the_latents_and_its_errors(tiny):
    dirs = ganspace(tiny, None, n=500, seed=0, components=4)
    assert dirs.source == "latents" and dirs.vectors.shape == (4, tiny.latent_dim)
    with pytest.raises(UserError, match="more samples"):
        ganspace(tiny, None, n=3, components=4)
    with pytest.raises(UserError, match="unknown layer"):
        ganspace(tiny, "block9", n=50, components=2)


def test_edit_steps_along_a_direction():
    vectors = np.eye(4, dtype=np.float32)[:2]
    dirs = Directions("sefa", vectors, np.array([0.6, 0.4], dtype=np.float32), "test")
    z = torch.zeros(3, 4)
    out = edit_latents(z, dirs, Edit(component=1, sign=-1, step=2.5))
    assert torch.equal(out, torch.tensor([[0.0, -2.5, 0.0, 0.0]] * 3))
    assert Edit(1, -1, 2.5).to_json() == {"component": 1, "sign": -1, "step": 2.5}


def test_first_layer_weight_reads_linear_and_conv_layers():
    class WithLinear(LinearGenerator):
        def __init__(self):
            super().__init__(np.eye(6))
            self.fc = nn.Linear(6, 10, bias=False)

    source, w = first_layer_weight(WithLinear())
    assert source == "weight of fc" and w.shape == (6, 10)
