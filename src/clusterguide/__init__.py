"""clusterguide: label-free control for pretrained unconditional generators.

Cluster a generator's intermediate representations, learn a mapping per cluster from an auxiliary
Gaussian into that cluster's latents (IMLE), and sample images of a chosen cluster.
"""

__version__ = "0.1.0"
