"""The registry's direction: model families register themselves, the registry imports none.

As in timm, :mod:`sparkvision.models.registry` only holds entries; each family decorates
its builders, and :mod:`sparkvision.models` imports the families before every lookup.
So a family that fails to import says why, on every lookup, instead of leaving its
models "unknown" for the rest of the process.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

import sparkvision.models as models
from sparkvision.config import PreprocessConfig
from sparkvision.models import registry


def test_the_registry_and_model_directories_import_no_family_and_no_torch():
    code = textwrap.dedent("""
        import sys
        import sparkvision.models.model_dir, sparkvision.models.registry as registry
        loaded = [m for m in ("torch", *__import__("sparkvision.models").models.FAMILIES) if m in sys.modules]
        print(loaded, registry.list_models())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "[]"]


def test_the_package_lookups_know_every_family():
    lite = [f"efficientnet_lite{i}{s}" for i in range(3) for s in ("", "_stages")]
    assert models.list_models() == [*lite, "fcos_lite0", "hog", "lenet5", "lenet5_1998", "smallcnn"]
    assert models.list_models(pretrained=True) == [*lite, "fcos_lite0"]
    spec = models.get_spec("smallcnn")
    assert spec.builder.__module__ == "sparkvision.models.smallcnn" and spec.num_features == 128
    assert models.create_model("lenet5", num_classes=3).get_classifier().out_features == 3
    with pytest.raises(KeyError, match="unknown model 'nope'; registered: efficientnet_lite0, efficientnet_lite0_stages, efficientnet_lite1"):
        models.get_spec("nope")


@pytest.fixture
def broken_family(tmp_path, monkeypatch):
    """A family that registers a model, then fails on a missing dependency (as one with
    an optional extra not installed would)."""
    (tmp_path / "sparkvision_broken_family.py").write_text(textwrap.dedent("""
        from sparkvision.config import PreprocessConfig
        from sparkvision.models.registry import register


        @register("broken_net", PreprocessConfig(size=(8, 8), channels=1, mean=(0.5,), std=(0.5,)), num_classes=2)
        def build(pretrained=False, num_classes=2):
            import torch

            return torch.nn.Linear(64, num_classes)


        import sparkvision_missing_dependency  # noqa: E402, F401
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    models.load_families()  # sparkvision's own families first, so the copy below holds them
    monkeypatch.setattr(models, "FAMILIES", (*models.FAMILIES, "sparkvision_broken_family"))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield tmp_path
    for name in ("sparkvision_broken_family", "sparkvision_missing_dependency"):
        sys.modules.pop(name, None)


def test_a_family_that_fails_to_import_raises_its_own_error_on_every_lookup(broken_family):
    for _ in range(3):
        with pytest.raises(ModuleNotFoundError, match="sparkvision_missing_dependency"):
            models.get_spec("broken_net")
        with pytest.raises(ModuleNotFoundError, match="sparkvision_missing_dependency"):
            models.list_models()
    # Once the dependency is there, the same process finds the model: the family's second
    # import registers the same builder again, which is not a name clash.
    (broken_family / "sparkvision_missing_dependency.py").write_text("")
    importlib.invalidate_caches()
    assert models.get_spec("broken_net").num_classes == 2
    assert "broken_net" in models.list_models()
    assert models.create_model("broken_net").out_features == 2


def test_another_builder_under_a_taken_name_is_refused(private_registry):
    with pytest.raises(ValueError, match="a model named 'lenet5' is already registered"):
        registry.register("lenet5", PreprocessConfig(), num_classes=2)(lambda pretrained=False, num_classes=2: None)
