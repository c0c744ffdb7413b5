"""The top-level API: lazy exports, fit/load round trip on the tiny generator."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import clusterguide as cg
from clusterguide.errors import UserError


def test_every_public_name_resolves_and_is_listed():
    for name in cg.__all__:
        assert getattr(cg, name) is not None
    assert set(cg._EXPORTS) == set(cg.__all__) - {"__version__"}
    with pytest.raises(AttributeError):
        cg.no_such_thing  # noqa: B018


def test_importing_the_package_loads_neither_torch_nor_faiss():
    code = "import sys, clusterguide; print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_fit_save_load_name_sample_round_trip(tmp_path):
    fitted = cg.fit(
        "tiny-dcgan",
        layer="block1",
        clusters=3,
        samples=600,
        epochs=2,
        verbose=False,
        mapping_settings={"hinge_boost": 2},
    )
    assert isinstance(fitted, cg.ClusterSampler) and fitted.clusters == ["0", "1", "2"]
    assert fitted.run.mapping.hinge_boost == 2.0 and fitted.run.mapping.epochs == 2
    with pytest.raises(UserError, match="save the run first"):
        fitted.name("0", "left")
    fitted.save(tmp_path / "run")
    loaded = cg.load(tmp_path / "run")
    assert type(loaded) is type(fitted)
    assert loaded.name("1", "the middle one") == "1"
    assert cg.load(tmp_path / "run").names == {"1": "the middle one"}
    a = fitted.sample("1", n=5, seed=3)
    b = loaded.sample("the middle one", n=5, seed=3)
    assert a.images.dtype == np.uint8 and a.images.shape[0] == 5
    assert np.array_equal(a.images, b.images) and np.array_equal(a.latents, b.latents)
    assert np.array_equal(loaded(1, n=5, seed=3).images, b.images)  # calling is sampling


def test_fit_rejects_options_beside_a_spec():
    with pytest.raises(UserError, match="inside the GeneratorSpec"):
        cg.fit(cg.GeneratorSpec("tiny-dcgan"), layer="block1", clusters=2, checkpoint="x")


def test_fit_rejects_an_unknown_mapping_setting():
    with pytest.raises(UserError, match="unknown mapping setting 'hinge'"):
        cg.fit("tiny-dcgan", layer="block1", clusters=2, samples=100, mapping_settings={"hinge": 1})


def test_no_submodule_shadows_a_top_level_function():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(cg.__path__)}
    assert not modules & {"fit", "load"}  # `import clusterguide.fit` would replace cg.fit
