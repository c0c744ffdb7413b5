"""The public entry point for sampling: a fitted run + its generator -> latents -> images.

``ClusterSampler(cluster, n, seed, method)`` draws images of one cluster:

- ``imle``: G(T_c(e)), e from the generator's prior (the paper recipe's mappings: N(0, I)); one
  head-free pass per image.
- ``corrected``: T_c(e) moved to the cluster's own mean and covariance, and any sample then outside
  the cluster moved back inside by Newton steps on its assignment margin (:mod:`correction`): a
  few head passes per image whatever the cluster's share; recall where the mapping's falls short.
- ``exact``: rejection sampling, z from the prior kept when it falls in every cluster along the
  path; exact, but costs about 1/p_c head passes per image (the acceptance rate is reported).

Sample i of a seed is the same whatever the batch size or n: e and the prior candidates come from
per-index streams (:mod:`seeding`), and the networks run in eval mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clusterguide.correction import corrected
from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.generators.registry import load_generator
from clusterguide.imaging import to_uint8
from clusterguide.mapping import MappingNetwork, draw_inputs
from clusterguide.progress import bar, progress
from clusterguide.run import Run
from clusterguide.seeding import BLOCK, check_seed, derive_seed

METHODS = ("imle", "corrected", "exact")
PROGRESS_FROM = 1000  # images from which synthesize reports progress


def mapped_blocks(
    G: GeneratorAdapter, net: MappingNetwork, stream: int, first: int = 0
) -> Iterator[torch.Tensor]:
    """T(e) for the inputs e of the random stream ``stream`` from row ``first`` (a multiple of BLOCK)
    on, one whole block of BLOCK rows at a time: a matmul's rounding can depend on how many rows it
    sees, so mapping exactly the requested rows would tie sample i to n. The sampler and export
    both draw through this, so export image i is sample image i."""
    net = net.to(G.device).eval()
    for start in itertools.count(first, BLOCK):
        with torch.no_grad():
            yield net(draw_inputs(net, G.sample_latents, stream, start, BLOCK).to(G.device))


@dataclass
class SampleOutput:
    images: np.ndarray  # (N, H, W, 3) uint8
    latents: np.ndarray  # (N, D) float32, the generator latents the images came from
    cluster: str  # cluster path ("" for prior samples)
    method: str  # "imle", "corrected", "exact" or "prior"
    seed: int
    acceptance_rate: float | None = None  # exact sampling only: accepted / tried
    tried: int | None = None  # exact sampling only: prior candidates evaluated


class ClusterSampler:
    def __init__(self, generator: GeneratorAdapter, run: Run) -> None:
        self.generator = generator
        self.run = run

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu", class_label: int | None = None) -> ClusterSampler:
        """Load a run folder and its generator; ``class_label`` overrides the fit's class
        (cross-class transfer on class-conditional generators)."""
        run = Run.load(run_dir)
        G = load_generator(run.generator, device=device)
        weights = run.generator_info.get("weights_id")
        if weights and weights != G.weights_id:
            raise UserError(
                f"the generator's weights ({G.weights_id[:12]}) differ from the ones the run was fit on ({weights[:12]})"
            )
        label = run.fit.class_label if class_label is None else class_label
        return cls(G.conditioned(label) if label is not None else G, run)

    @property
    def device(self) -> torch.device:
        return self.generator.device

    # ---- the run ----------------------------------------------------------------------------
    @property
    def clusters(self) -> list[str]:
        """Every cluster path of the run, parents before children (``["0", "1", "1/0", ...]``)."""
        return self.run.clusters()

    @property
    def names(self) -> dict[str, str]:
        """Cluster path -> the name a person gave it."""
        return dict(self.run.names)

    @property
    def metrics(self) -> dict:
        """What ``metrics.json`` holds: per cluster size, share, fidelity, precision, recall."""
        return self.run.metrics

    def save(self, run_dir: str | Path, overwrite: bool = False) -> Path:
        """Write the run folder atomically (``overwrite=True`` replaces an existing run folder)."""
        return self.run.save(run_dir, overwrite=overwrite)

    def name(self, cluster: str | int, name: str) -> str:
        """Name a cluster (an empty name clears it); returns its path. A saved run's names.json
        is updated under its lock; an unsaved run keeps the name until ``save``."""
        from clusterguide.run import set_name

        if self.run.path is None:
            raise UserError("save the run first (sampler.save(run_dir)); names live in the run folder")
        path, names = set_name(self.run.path, str(cluster), name)
        self.run.names = names
        return path

    # ---- latents ------------------------------------------------------------------------------
    def _mapped_blocks(self, path: str, seed: int) -> Iterator[torch.Tensor]:
        return mapped_blocks(self.generator, self.run.mapping_for(path), derive_seed(seed, "e", path))

    @torch.no_grad()
    def imle_latents(self, cluster: str, n: int, seed: int = 0) -> torch.Tensor:
        path = self.run.resolve(cluster)
        blocks = self._mapped_blocks(path, seed)
        return torch.cat([next(blocks).cpu()[: n - start] for start in range(0, n, BLOCK)])

    def corrected_latents(self, cluster: str, n: int, seed: int = 0) -> torch.Tensor:
        """The ``imle`` latents of the seed (the same inputs e), corrected (:mod:`correction`) in
        the same whole blocks."""
        path = self.run.resolve(cluster)
        moment_map = self.run.correction_for(path)
        blocks = self._mapped_blocks(path, seed)
        out = []
        with bar(n, desc=f"corrected samples of {path}", unit="image", show=n >= PROGRESS_FROM) as b:
            for start in range(0, n, BLOCK):
                z, _ = corrected(self.generator, self.run.tree, path, moment_map, next(blocks))
                out.append(z.cpu()[: n - start])
                b.update(min(BLOCK, n - start))
        return torch.cat(out)

    @torch.no_grad()
    def exact_latents(
        self, cluster: str, n: int, seed: int = 0, batch_size: int = 512, max_tries: int | None = None
    ) -> tuple[torch.Tensor, int]:
        """The first n prior latents of the seed's stream that fall in ``cluster``; also returns
        how many candidates were tried."""
        path = self.run.resolve(cluster)
        G = self.generator
        share = self.run.tree.stats.get(path, {}).get("share") or 0.01
        limit = max_tries or max(10_000, int(50 * n / max(share, 1e-4)))
        kept: list[torch.Tensor] = []
        found, offset, last_accepted = 0, 0, -1
        stream = derive_seed(seed, "exact")
        with bar(n, desc=f"exact samples of {path}", unit="image", show=n >= PROGRESS_FROM) as b:
            while found < n:
                if offset >= limit:
                    raise UserError(
                        f"exact sampling of cluster {path} found {found} of {n} in {offset} prior samples; use --method imle"
                    )
                z = G.sample_latents(batch_size, stream, start=offset)
                accepted = torch.from_numpy(np.nonzero(self.run.tree.membership(G, z, path))[0])
                take = min(n - found, accepted.numel())
                if take:
                    kept.append(z[accepted[:take]])
                    last_accepted = offset + int(accepted[take - 1])
                    b.update(take)
                found += take
                offset += batch_size
        # counted up to the last accepted candidate, so the rate does not depend on batch size
        tried = last_accepted + 1
        return torch.cat(kept), tried

    # ---- images -------------------------------------------------------------------------------
    @torch.no_grad()
    def synthesize(self, latents: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        out = []
        batches = range(0, latents.shape[0], batch_size)
        starts: Iterable[int] = batches
        if latents.shape[0] >= PROGRESS_FROM:  # small draws (the gallery's) stay quiet
            starts = progress(batches, total=len(batches), desc="images", unit="batch")
        for s in starts:
            out.append(to_uint8(self.generator.synthesize(latents[s : s + batch_size].to(self.device))))
        if not out:
            size = self.generator.image_size
            return np.zeros((0, size, size, 3), np.uint8)
        return np.concatenate(out)

    def __call__(
        self, cluster: str | int, n: int, seed: int = 0, method: str = "imle", batch_size: int = 64
    ) -> SampleOutput:
        return self.sample(cluster, n, seed, method, batch_size)

    def sample(
        self, cluster: str | int, n: int, seed: int = 0, method: str = "imle", batch_size: int = 64
    ) -> SampleOutput:
        """``n`` images of ``cluster`` (a path like ``"1/0"`` or a name). ``imle``: G(T_c(e));
        ``corrected``: those latents corrected (:mod:`correction`); ``exact``: prior samples that
        fall in the cluster. Image i of a seed does not depend on ``n`` or ``batch_size``."""
        check_seed(seed)
        if n < 1:
            raise UserError(f"-n must be at least 1 (got {n})")
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        path = self.run.resolve(cluster)
        rate = tried = None
        if method == "imle":
            z = self.imle_latents(path, n, seed)
        elif method == "corrected":
            z = self.corrected_latents(path, n, seed)
        else:
            z, tried = self.exact_latents(path, n, seed, batch_size=max(batch_size, 256))
            rate = n / tried
        images = self.synthesize(z, batch_size)
        return SampleOutput(images, z.numpy().astype(np.float32), path, method, seed, rate, tried)

    def random(self, n: int, seed: int = 0, batch_size: int = 64) -> SampleOutput:
        """Plain G(z) with z from the prior, for comparison."""
        check_seed(seed)
        z = self.generator.sample_latents(n, derive_seed(seed, "prior"))
        return SampleOutput(self.synthesize(z, batch_size), z.numpy().astype(np.float32), "", "prior", seed)
