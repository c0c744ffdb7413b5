"""Shared fixtures: a tiny seeded generator and a small fitted run made from it."""

from __future__ import annotations

import faiss
import pytest
import torch

from clusterguide.progress import set_progress

# Toy-sized tensors and k-means runs gain nothing from threads, and OpenMP's spin-waiting makes
# them very slow on a loaded 2-core machine: the whole suite runs on one thread.
torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
set_progress(False)


@pytest.fixture(scope="session")
def tiny_generator():
    from clusterguide.generators import load_generator

    return load_generator("tiny-dcgan")


def fit_tiny(
    out_dir, k: int = 3, samples: int = 600, epochs: int = 3, recipe: str = "fast", layer: str = "block1"
):
    from clusterguide.fitting import fit_run
    from clusterguide.generators import GeneratorSpec
    from clusterguide.mapping import MappingConfig
    from clusterguide.run import FitConfig

    run, G = fit_run(
        GeneratorSpec("tiny-dcgan"),
        FitConfig(layer=layer, clusters=k, samples=samples, seed=0, eval_samples=200, min_cluster_size=8),
        MappingConfig.preset(recipe, epochs=epochs, width=64, batch_size=64),
        log=lambda m: None,
    )
    run.save(out_dir)
    return run, G


def without_corrections(src, dst):
    """A copy of run folder ``src`` at ``dst`` as a fit before the corrected sampler wrote it: no
    moment maps, and none listed in its config."""
    import json
    import shutil

    from clusterguide import artifacts

    shutil.copytree(src, dst)
    (dst / artifacts.CORRECTIONS).unlink()
    config = json.loads((dst / artifacts.CONFIG).read_text())
    del config["files"][artifacts.CORRECTIONS]
    (dst / artifacts.CONFIG).write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run_dir, run) of a 3-cluster fit of tiny-dcgan at block1; treat as read-only."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run, _ = fit_tiny(out)
    return out, run


@pytest.fixture(scope="session")
def refined_tiny_run(tiny_run, tmp_path_factory):
    """(run_dir, RefineResult) of a copy of tiny_run with cluster 0 refined at block3 into 2
    leaves; treat as read-only (copy it to refine again)."""
    import shutil

    from clusterguide.refine import refine_run

    run_dir = shutil.copytree(tiny_run[0], tmp_path_factory.mktemp("runs") / "refined")
    return run_dir, refine_run(run_dir, "0", "block3", 2, samples=400, epochs=8, log=lambda m: None)
