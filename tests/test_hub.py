"""Model states: loading, ready, error, and what requests get meanwhile."""

from __future__ import annotations

import json

import msgspec
import pytest

from service.engine.models import ModelHub
from service.engine.registry import ModelSpec, Registry
from service.errors import NotFound, Unavailable

pytestmark = pytest.mark.unit


async def test_loading_then_ready_and_a_broken_model_is_an_error(settings, models_file, tmp_path):
    entries = json.loads(models_file.read_text())["models"]
    entries["broken"] = {"source": str(tmp_path / "no-such-checkpoint")}
    registry = Registry(msgspec.convert(entries, dict[str, ModelSpec]))
    hub = ModelHub(msgspec.structs.replace(settings, models="tiny,broken"), registry)
    assert hub.status == {"tiny": "loading", "broken": "loading"}
    with pytest.raises(Unavailable) as loading:
        hub.get("tiny")
    assert loading.value.code == "model_loading" and loading.value.retry_after == 5
    hub.start()
    await hub.wait_ready()
    try:
        assert hub.status == {"tiny": "ready", "broken": "error"}
        assert hub.get("tiny").encoder.dimension == 64
        with pytest.raises(Unavailable) as broken:
            hub.get("broken")
        assert broken.value.code == "model_unavailable" and broken.value.retry_after == 60
        with pytest.raises(NotFound, match="does not exist"):
            hub.get("tiny-last")  # in the registry, not served
    finally:
        await hub.stop()


def test_unknown_served_model_stops_start_up(settings):
    with pytest.raises(SystemExit, match="not in the model registry"):
        ModelHub(msgspec.structs.replace(settings, models="nope"), Registry.load(settings.models_file))


def test_models_file_entries_are_validated(tmp_path):
    bad = tmp_path / "models.toml"
    bad.write_text('[models."x"]\nsource = "/m"\npooling = "max"\n')
    with pytest.raises(SystemExit, match="invalid models file"):
        Registry.load(bad)
    good = tmp_path / "good.toml"
    good.write_text('[models."x"]\nsource = "/m"\npooling = "last"\nmax_tokens = 512\n')
    spec = Registry.load(good).get("x")
    assert spec.name == "x" and spec.pooling == "last" and spec.max_tokens == 512
    assert Registry.load(good).get("gemma3:270m") is not None  # built-ins stay
