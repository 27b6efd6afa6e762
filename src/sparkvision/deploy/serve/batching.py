"""Dynamic micro-batching: concurrent requests share one ONNX Runtime call.

A CNN on CPU runs a batch of 8 images in much less than 8 times one image's time, so
requests that arrive together are grouped: the first request of an idle model waits
at most ``window`` for company, requests that arrive while the model is busy join the
next call at once, and no call takes more than ``max_batch`` images (a single larger
request runs alone). Inference runs on one dedicated thread: the event loop only
queues and hands back arrays, so it keeps accepting requests while the model works.
With batching off every request is its own call on that same thread.

``infer`` returns one array (a classifier's probabilities) or a tuple of arrays (a
detector's boxes and scores), each with one row per image; every request gets its rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sparkvision.deploy.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

Outputs = np.ndarray | tuple[np.ndarray, ...]


def _rows(outputs: Outputs, start: int, stop: int) -> Outputs:
    if isinstance(outputs, tuple):
        return tuple(out[start:stop] for out in outputs)
    return outputs[start:stop]


@dataclass
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, infer: Callable[[np.ndarray], Outputs], metrics: ServeMetrics, *, enabled: bool = True,
                 max_batch: int = 32, window_ms: float = 5.0) -> None:
        self.infer = infer
        self.metrics = metrics
        self.enabled = enabled
        self.max_batch = max_batch
        self.window = window_ms / 1000.0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sv-infer")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._carry: _Pending | None = None

    async def start(self) -> None:
        if self.enabled:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._loop(), name="sv-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, tensor: np.ndarray) -> Outputs:
        """Model outputs for ``tensor`` (n, C, H, W), possibly computed together with others."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            self.metrics.queue.inc(len(tensor))
            try:
                return await loop.run_in_executor(self._executor, self._run, [tensor])
            finally:
                self.metrics.queue.dec(len(tensor))
        assert self._queue is not None, "batcher not started"
        future: asyncio.Future = loop.create_future()
        self.metrics.queue.inc(len(tensor))
        await self._queue.put(_Pending(tensor, future))
        return await future

    def _run(self, tensors: list[np.ndarray]) -> Outputs:
        """On the inference thread: one ONNX Runtime call over every tensor given."""
        batch = tensors[0] if len(tensors) == 1 else np.concatenate(tensors)
        start = time.perf_counter()
        out = self.infer(batch)
        self.metrics.inference.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_requests.observe(len(tensors))
        return out

    async def _next(self, timeout: float | None) -> _Pending | None:
        assert self._queue is not None
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            assert first is not None
            items, count = [first], len(first.tensor)
            deadline = loop.time() + self.window
            while count < self.max_batch:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if count + len(item.tensor) > self.max_batch:
                    self._carry = item
                    break
                items.append(item)
                count += len(item.tensor)
            live = [p for p in items if not p.future.done()]  # a client that went away is not computed
            self.metrics.queue.dec(count)
            if not live:
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, [p.tensor for p in live])
            except Exception as exc:  # noqa: BLE001 - the callers get the failure, the loop goes on
                log.exception("inference failed on a batch of %d requests", len(live))
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            offset = 0
            for p in live:
                n = len(p.tensor)
                if not p.future.done():
                    p.future.set_result(_rows(outputs, offset, offset + n))
                offset += n
