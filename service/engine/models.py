"""The served models: each loads in the background at start-up and gets its own batcher."""

from __future__ import annotations

import asyncio
import logging
import time

from service.engine.batcher import Batcher
from service.engine.encoder import Encoder
from service.engine.loader import default_batch_tokens, load, pick_device, pick_dtype
from service.engine.registry import Registry
from service.engine.served import ServedModel, find_served, served_models
from service.settings import Settings

log = logging.getLogger("service.engine")


class ModelHub:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(self.device, settings.dtype)
        self.models = served_models(settings, registry)
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
        budget = self.settings.batch_tokens or default_batch_tokens(self.device)
        try:  # on a GPU this captures the CUDA graphs (seconds): off the event loop
            encoder = await asyncio.to_thread(Encoder, loaded, cuda_graphs=self.settings.cuda_graphs,
                                              max_batch=self.settings.batch_max_inputs, max_tokens=budget)
        except Exception as exc:
            log.exception("could not prepare model %s", served.spec.name)
            served.status, served.error = "error", f"{type(exc).__name__}: {exc}"
            return
        served.encoder = encoder
        served.dimension, served.vocab_size, served.tokenizer = encoder.dimension, encoder.vocab_size, encoder.tokenizer
        served.batcher = Batcher(
            encoder.encode,
            encoder.dimension,
            max_tokens=budget,
            max_batch=self.settings.batch_max_inputs,
            max_wait=self.settings.batch_wait_ms / 1000,
            patience=self.settings.batch_patience,
            max_pending=self.settings.queue_max_inputs,
            name=served.spec.name,
            submit=encoder.submit if encoder.graphs is not None else None,  # pipelined: CUDA graphs' replays
        )
        served.batcher.start()
        served.status = "ready"
        log.debug("model %s ready (dimension %d) in %.1f s", served.spec.name, encoder.dimension,
                 time.perf_counter() - started)

    def get(self, name: str, param: str = "model") -> ServedModel:
        return find_served(self.models, name, param)

    @property
    def status(self) -> dict[str, str]:
        return {name: served.status for name, served in self.models.items()}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for served in self.models.values():
            if served.batcher is not None:
                await served.batcher.stop()
