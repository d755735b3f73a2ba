"""Dynamic batching of image requests: requests that can share a reverse process (the same sampler,
steps and guidance) wait at most `max_wait` seconds to be drawn together, up to `max_batch` images, off
the event loop. Each request keeps its own noise generator, so its images do not depend on what it was
batched with (imagegen.sampling.Sampler.sample_groups).

The batches are drawn by whichever thread calls `run`; serve.py gives it the main thread and the event
loop another one, because on a CPU torch sampled 19-46% slower in a second thread (docs/api.md)."""
from __future__ import annotations

import asyncio
import math
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The queue holds its maximum: the client should come back after `retry_after` seconds."""

    def __init__(self, retry_after):
        super().__init__(f"the server is busy: retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    """One request's images: `n` of class `label` (None: the null class) from noise seed `seed`, with
    `settings` (a SamplerSettings; requests with equal settings can share a batch)."""
    label: int | None
    n: int
    seed: int
    settings: object
    future: asyncio.Future = None
    loop: asyncio.AbstractEventLoop = None
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchReport:
    """What a request learns about how it was drawn."""
    images: list          # its PNGs
    seconds: float        # the batch's sampling time
    queued: float         # from arrival to the start of its batch
    requests: int         # requests in its batch
    batch_images: int     # images in its batch


class ImageBatcher:
    """A bounded FIFO of Jobs and the thread that draws them with `draw(groups, settings)`.

    `max_batch(settings)`: the most images one batch may hold for those settings; `batching=False` draws
    each request alone (the baseline the load script compares with). At most `max_queue` requests wait;
    one more raises QueueFull with a Retry-After estimated from the measured throughput."""

    def __init__(self, draw, max_batch, max_wait, max_queue, batching=True):
        self.draw, self.max_batch, self.max_wait, self.max_queue = draw, max_batch, max_wait, max_queue
        self.batching = batching
        self.queue = deque()
        self.condition = threading.Condition()
        self.stopping = False
        self.images_per_second = None  # moving average over batches, for Retry-After
        self.busy = False
        self.running = False

    def stop(self):
        """Ask `run` to return once the batch in progress is drawn; the waiting requests then get 503."""
        with self.condition:
            self.stopping = True
            self.condition.notify_all()

    def stats(self):
        with self.condition:
            return {"queued_requests": len(self.queue), "queued_images": sum(j.n for j in self.queue),
                    "max_queue": self.max_queue, "busy": self.busy, "batching": self.batching,
                    "images_per_second": self.images_per_second}

    async def submit(self, job):
        """Queue `job` and wait for its BatchReport; QueueFull when the queue is full."""
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self.condition:
            if self.stopping:
                raise QueueFull(5)
            if len(self.queue) >= self.max_queue:
                raise QueueFull(self._retry_after())
            self.queue.append(job)
            self.condition.notify_all()
        return await job.future

    def _retry_after(self):
        """Seconds until the queue has drained enough to take one more request: its images at the measured
        rate (at least 1 s; 5 s before any batch has been measured)."""
        if not self.images_per_second:
            return 5
        return max(1, math.ceil(sum(j.n for j in self.queue) / self.images_per_second))

    def _compatible(self, first, job):
        return job.settings == first.settings

    def _take_batch(self):
        """Under the lock: the oldest job and, when batching, the waiting jobs that share its settings,
        oldest first, while they fit in max_batch images."""
        first = self.queue.popleft()
        batch, limit = [first], self.max_batch(first.settings)
        if self.batching:
            for job in list(self.queue):
                if job.future.done():  # its client has gone
                    self.queue.remove(job)
                elif self._compatible(first, job) and sum(j.n for j in batch) + job.n <= limit:
                    batch.append(job)
                    self.queue.remove(job)
        return batch

    def _wait_for_company(self):
        """Under the lock: wait until the oldest job's batch is full or it has waited max_wait."""
        first = self.queue[0]
        limit = self.max_batch(first.settings)
        while not self.stopping:
            waiting = sum(j.n for j in self.queue if self._compatible(first, j))
            left = first.enqueued + self.max_wait - time.perf_counter()
            if waiting >= limit or left <= 0:
                return
            self.condition.wait(left)

    def run(self, keep_going=lambda: True):
        """Draw batches in the calling thread until stop(), or until keep_going() (asked every half
        second while idle) turns false."""
        self.running = True
        try:
            self._work(keep_going)
        finally:
            self.running = False

    def _work(self, keep_going):
        while True:
            with self.condition:
                while not self.queue and not self.stopping:
                    self.condition.wait(0.5)
                    if not keep_going():
                        self.stopping = True
                if self.stopping:
                    break
                if self.batching:
                    self._wait_for_company()
                    if self.stopping:
                        break
                batch = self._take_batch()
                self.busy = True
            self._run(batch)
            with self.condition:
                self.busy = False
        with self.condition:
            for job in self.queue:
                job.loop.call_soon_threadsafe(_fail, job.future, QueueFull(5))
            self.queue.clear()

    def _run(self, batch):
        start = time.perf_counter()
        try:
            results = self.draw([(j.label, j.n, j.seed) for j in batch], batch[0].settings)
        except Exception as err:  # a bug must reach each client as an error, not hang them
            traceback.print_exc()
            for job in batch:
                job.loop.call_soon_threadsafe(_fail, job.future, err)
            return
        seconds = time.perf_counter() - start
        images = sum(j.n for j in batch)
        rate = images / max(seconds, 1e-9)
        self.images_per_second = rate if self.images_per_second is None else 0.7 * self.images_per_second + 0.3 * rate
        for job, pngs in zip(batch, results):
            report = BatchReport(pngs, seconds, start - job.enqueued, len(batch), images)
            job.loop.call_soon_threadsafe(_succeed, job.future, report)


def _succeed(future, value):
    if not future.done():  # the client may have gone: its future was cancelled
        future.set_result(value)


def _fail(future, error):
    if not future.done():
        future.set_exception(error)
