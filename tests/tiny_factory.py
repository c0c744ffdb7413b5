"""A user generator given by import path (``tiny_factory:make``), for the custom-adapter tests."""

import torch
from torch import nn


def make():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3 * 8 * 8), nn.Tanh(), nn.Unflatten(1, (3, 8, 8))
    )
    return net, 8
