"""finexp-serve's micro-batcher: concurrent requests share model calls and each gets exactly its own rows' answers
(equal to a sequential Predictor call), batches respect serve.max_batch_size and serve.max_wait_ms, a failing call
fails only the request at fault, shutdown scores what is queued; /metrics is Prometheus text that counts it all."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import pytest

from conftest import applicants_frame
from finexp.inference import Predictor
from finexp.serving import BatcherClosed, MicroBatcher, create_app, start_in_thread
from serving_support import train_table_checkpoint

KEY = "k3y-for-batching-0123456789"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor.from_checkpoint(train_table_checkpoint(tmp_path_factory.mktemp("batching") / "run"), device="cpu")


class Counting:
    """A model that records the rows of every call and delegates to a real predictor."""

    def __init__(self, inner: Predictor) -> None:
        self.inner, self.calls = inner, []
        self.labels, self.spec, self.metadata = inner.labels, inner.spec, inner.metadata
        self.input_profile = inner.input_profile

    def predict(self, rows):
        self.calls.append(len(rows))
        return self.inner.predict(rows)


def rows(n: int, seed: int) -> list[dict]:
    frame = applicants_frame(n, seed=seed).drop(columns=["default"]).astype(object)
    return frame.where(frame.notna(), None).to_dict("records")


class running:
    def __init__(self, app) -> None:
        self.app = app

    def __enter__(self):
        self.server = start_in_thread(self.app)
        return self.server

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.server.thread.join(timeout=10)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(predictor):
    model = Counting(predictor)
    batches = [rows(2 + i % 3, seed=100 + i) for i in range(8)]
    batches[3][1]["income"] = "plenty"  # a bad row in one request: answered in place, the others unaffected
    app = create_app(model, max_batch_size=1000, max_wait_ms=400)
    with running(app) as server:

        async def clients() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/predict", json={"rows": b}) for b in batches))

        responses = asyncio.run(clients())
    assert [r.status_code for r in responses] == [200] * 8
    assert len(model.calls) < len(batches) and sum(model.calls) == sum(len(b) for b in batches)
    for batch, response in zip(batches, responses, strict=True):
        answers = response.json()["predictions"]
        expected = predictor.predict(batch)  # sequential, this request's rows alone
        assert len(answers) == len(batch)
        for answer, prediction in zip(answers, expected, strict=True):
            assert (answer["label"], answer["error"]) == (prediction.label, prediction.error)
            assert answer["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-6)
    assert responses[3].json()["predictions"][1]["error"] == "column 'income' expects a number, got 'plenty'"


class Gated:
    """A scorer whose first call waits for ``release``; records the rows of every call."""

    def __init__(self, poison: str | None = None) -> None:
        self.release, self.entered = threading.Event(), threading.Event()
        self.calls: list[list[str]] = []
        self.poison = poison

    def __call__(self, batch: list[dict]) -> list[dict]:
        self.calls.append([r["id"] for r in batch])
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(timeout=30)
        if self.poison is not None and len(batch) > 1 and any(r["id"] == self.poison for r in batch):
            raise ValueError(f"cannot score {self.poison}")
        if self.poison is not None and [r["id"] for r in batch] == [self.poison]:
            raise ValueError(f"cannot score {self.poison}")
        return [{"id": r["id"], "answer": r["id"].upper()} for r in batch]


def ids(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}"} for i in range(n)]


async def _wait_until(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.005)


def test_batches_never_exceed_max_batch_size_and_a_larger_request_goes_alone():
    scorer = Gated()
    observed: list[tuple[int, int]] = []
    batcher = MicroBatcher(scorer, max_batch_size=5, max_wait_s=1.0, observe=lambda r, n, w, s: observed.append((r, n)))

    async def main() -> list:
        deadline = asyncio.get_running_loop().time() + 30
        first = asyncio.ensure_future(batcher.run(ids("a", 5), deadline))  # full: scored at once, holds the model
        await _wait_until(scorer.entered)
        rest = [asyncio.ensure_future(batcher.run(ids(f"r{k}-", 2), deadline)) for k in range(6)]
        rest.append(asyncio.ensure_future(batcher.run(ids("big", 7), deadline)))
        await asyncio.sleep(0.05)
        assert batcher.depth() == (7, 19)
        scorer.release.set()
        answers = await asyncio.gather(first, *rest)
        await batcher.close()
        return answers

    answers = asyncio.run(main())
    assert observed == [(5, 1), (4, 2), (4, 2), (4, 2), (7, 1)]
    assert [len(c) for c in scorer.calls] == [5, 4, 4, 4, 7]
    assert answers[1] == [{"id": "r0-0", "answer": "R0-0"}, {"id": "r0-1", "answer": "R0-1"}]
    assert [a[0]["id"] for a in answers] == ["a0", *(f"r{k}-0" for k in range(6)), "big0"]


def test_a_lone_request_waits_max_wait_and_a_full_batch_does_not():
    async def timed(max_batch_size: int, max_wait_s: float, sizes: list[int]) -> tuple[float, list[float]]:
        waits: list[float] = []
        batcher = MicroBatcher(lambda b: b, max_batch_size, max_wait_s, observe=lambda r, n, w, s: waits.extend(w))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(batcher.run(ids(f"q{k}-", n), started + 30) for k, n in enumerate(sizes)))
        elapsed = loop.time() - started
        await batcher.close()
        return elapsed, waits

    elapsed, waits = asyncio.run(timed(100, 0.3, [1]))
    assert waits[0] >= 0.3 and elapsed >= 0.3  # held for company up to max_wait ...
    assert waits[0] < 2.0  # ... and no longer (a generous bound for a loaded machine)
    elapsed, waits = asyncio.run(timed(4, 5.0, [2, 2]))
    assert elapsed < 2.0 and max(waits) < 2.0  # full at 4 rows: scored without waiting the 5 s
    elapsed, waits = asyncio.run(timed(100, 0.0, [3]))
    assert waits[0] < 0.1  # max_wait 0: scored at once with only the requests already waiting


def test_a_failing_batch_fails_only_the_request_at_fault():
    scorer = Gated(poison="bad0")

    async def main() -> list:
        batcher = MicroBatcher(scorer, max_batch_size=100, max_wait_s=0.0)
        deadline = asyncio.get_running_loop().time() + 30
        first = asyncio.ensure_future(batcher.run(ids("w", 1), deadline))
        await _wait_until(scorer.entered)
        queued = [asyncio.ensure_future(batcher.run(ids(p, 2), deadline)) for p in ("ok", "bad", "fine")]
        await asyncio.sleep(0.05)
        scorer.release.set()
        out = await asyncio.gather(first, *queued, return_exceptions=True)
        await batcher.close()
        return out

    first, ok, bad, fine = asyncio.run(main())
    assert first == [{"id": "w0", "answer": "W0"}]
    assert ok == [{"id": "ok0", "answer": "OK0"}, {"id": "ok1", "answer": "OK1"}]
    assert isinstance(bad, ValueError) and str(bad) == "cannot score bad0"
    assert fine[1] == {"id": "fine1", "answer": "FINE1"}
    assert scorer.calls[1] == ["ok0", "ok1", "bad0", "bad1", "fine0", "fine1"]  # one call for the three ...
    assert scorer.calls[2:] == [["ok0", "ok1"], ["bad0", "bad1"], ["fine0", "fine1"]]  # ... then each alone


def test_shutdown_scores_what_is_queued_then_refuses():
    scorer = Gated()

    async def main() -> tuple:
        batcher = MicroBatcher(scorer, max_batch_size=1, max_wait_s=0.0)
        deadline = asyncio.get_running_loop().time() + 30
        running_one = asyncio.ensure_future(batcher.run(ids("x", 1), deadline))
        await _wait_until(scorer.entered)
        queued = asyncio.ensure_future(batcher.run(ids("y", 1), deadline))
        await asyncio.sleep(0.02)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.02)
        with pytest.raises(BatcherClosed, match="shutting down"):
            await batcher.run(ids("z", 1), deadline)
        scorer.release.set()
        await closing
        return await running_one, await queued, batcher._worker.done()

    first, second, stopped = asyncio.run(main())
    assert first == [{"id": "x0", "answer": "X0"}] and second == [{"id": "y0", "answer": "Y0"}] and stopped
    assert scorer.calls == [["x0"], ["y0"]]


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text format -> {(name, sorted label pairs): value}; every sample's family declared by # TYPE."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no # TYPE line"
        pairs = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or "")))
        samples[name, pairs] = float(value)
    return samples


def test_metrics_are_prometheus_text_and_count_requests_rows_and_batches(predictor):
    app = create_app(predictor, max_batch=16, max_batch_size=64, max_wait_ms=0, api_keys=[KEY])
    with running(app) as server, httpx.Client(base_url=server.url, timeout=30, headers={"X-API-Key": KEY}) as client:
        bad = rows(2, seed=3)
        bad[0]["debt"] = [1, 2]
        for batch in (rows(2, seed=1), rows(3, seed=2), rows(1, seed=4), bad):
            assert client.post("/predict", json={"rows": batch}).status_code == 200
        assert client.post("/predict", json={"rows": []}).status_code == 422
        assert client.get("/no-such-route").status_code == 404
        assert httpx.get(f"{server.url}/metrics").status_code == 401  # behind the API key like every route
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_metrics(response.text)
    assert m["finexp_requests_total", (("path", "/predict"), ("status", "200"))] == 4
    assert m["finexp_requests_total", (("path", "/predict"), ("status", "422"))] == 1
    assert m["finexp_requests_total", (("path", "other"), ("status", "404"))] == 1
    assert m["finexp_requests_total", (("path", "/metrics"), ("status", "401"))] == 1
    assert m["finexp_rows_total", ()] == 8 and m["finexp_row_errors_total", ()] == 1
    assert m["finexp_batch_rows_count", ()] == 4 and m["finexp_batch_rows_sum", ()] == 8  # one at a time: 4 calls
    assert m["finexp_batch_rows_bucket", (("le", "2"),)] == 3 and m["finexp_batch_rows_bucket", (("le", "+Inf"),)] == 4
    assert m["finexp_batch_requests_sum", ()] == 4 and m["finexp_queue_wait_seconds_count", ()] == 4
    assert m["finexp_request_duration_seconds_count", ()] == 5  # every /predict, the 422 included
    buckets = [v for (name, _), v in m.items() if name == "finexp_request_duration_seconds_bucket"]
    assert buckets == sorted(buckets) and buckets[-1] == 5
    p50 = m["finexp_request_latency_seconds", (("quantile", "0.5"),)]
    p95 = m["finexp_request_latency_seconds", (("quantile", "0.95"),)]
    assert 0 < p50 <= p95 <= m["finexp_request_latency_seconds_sum", ()]
    assert m["finexp_queue_requests", ()] == 0 and m["finexp_queue_rows", ()] == 0
    assert abs(m["finexp_start_time_seconds", ()] - time.time()) < 600
