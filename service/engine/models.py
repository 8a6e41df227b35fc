"""The served models: each loads in the background at start-up and gets its own batcher."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from service.engine.batcher import Batcher
from service.engine.encoder import Encoder
from service.engine.loader import default_batch_tokens, load, pick_device, pick_dtype
from service.engine.registry import ModelSpec, Registry
from service.errors import NotFound, Unavailable
from service.settings import Settings

log = logging.getLogger("service.engine")


@dataclass
class ServedModel:
    spec: ModelSpec
    status: str = "loading"  # loading | ready | error
    error: str = ""
    encoder: Encoder | None = None
    batcher: Batcher | None = None
    created: int = field(default_factory=lambda: int(time.time()))


class ModelHub:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(self.device, settings.dtype)
        self.models: dict[str, ServedModel] = {}
        for name in settings.served_models:
            spec = registry.get(name)
            if spec is None:
                raise SystemExit(f"EMBEDSEARCH_MODELS names {name!r}, which is not in the model registry")
            self.models[name] = ServedModel(spec)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for served in self.models.values():
            self._tasks.append(asyncio.get_running_loop().create_task(self._load(served)))

    async def wait_ready(self) -> None:
        await asyncio.gather(*self._tasks)

    async def _load(self, served: ServedModel) -> None:
        started = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(load, served.spec, self.settings.model_cache, self.device, self.dtype)
        except Exception as exc:
            log.exception("could not load model %s", served.spec.name)
            served.status, served.error = "error", f"{type(exc).__name__}: {exc}"
            return
        encoder = Encoder(loaded)
        served.encoder = encoder
        served.batcher = Batcher(
            encoder.encode,
            encoder.dimension,
            max_tokens=self.settings.batch_tokens or default_batch_tokens(self.device),
            max_batch=self.settings.batch_max_inputs,
            max_wait=self.settings.batch_wait_ms / 1000,
            patience=self.settings.batch_patience,
            max_pending=self.settings.queue_max_inputs,
            name=served.spec.name,
        )
        served.batcher.start()
        served.status = "ready"
        log.info("model %s ready (dimension %d) in %.1f s", served.spec.name, encoder.dimension,
                 time.perf_counter() - started)

    def get(self, name: str, param: str = "model") -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise NotFound(f"The model `{name}` does not exist or is not served here.", param=param,
                           code="model_not_found")
        if served.status == "loading":
            raise Unavailable(f"The model `{name}` is still loading; retry shortly.", retry_after=5, code="model_loading")
        if served.status == "error":
            raise Unavailable(f"The model `{name}` failed to load.", retry_after=60, code="model_unavailable")
        return served

    @property
    def status(self) -> dict[str, str]:
        return {name: served.status for name, served in self.models.items()}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for served in self.models.values():
            if served.batcher is not None:
                await served.batcher.stop()
