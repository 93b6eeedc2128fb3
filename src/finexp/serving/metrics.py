"""``GET /metrics``: the server's counters in the Prometheus text exposition format (version 0.0.4), written here
(a few dozen lines) rather than through ``prometheus_client``, which finexp does not otherwise need.

Every update happens on the server's event loop (the access gate after each response, the batcher after each model
call), so the counters need no lock. Route labels are the app's own routes, anything else counts as ``other``: a
client cannot grow the label set by asking for made-up paths.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # rows or requests per model call
QUANTILES = (0.5, 0.95, 0.99)
RECENT = 1024  # the summary's quantiles describe the last this-many /predict requests


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    escaped = (f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


class Histogram:
    """Cumulative buckets, sum and count (a Prometheus histogram)."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append(f'{name}_bucket{{le="{_number(bound)}"}} {running}')
        return [*out, f"{name}_sum {_number(self.sum)}", f"{name}_count {self.count}"]


class ServingMetrics:
    """What ``/metrics`` reports: requests by route and status, rows, row errors, request latency (histogram and
    recent quantiles), rows and requests per model call, time queued, time in the model, queue depth.

    Args:
        routes: the paths counted under their own name (the rest: ``other``).
        queue_depth: returns (requests, rows) waiting for the model now.
    """

    def __init__(self, routes: Iterable[str], queue_depth: Callable[[], tuple[int, int]] = lambda: (0, 0)) -> None:
        self.routes = set(routes)
        self.queue_depth = queue_depth
        self.started = time.time()
        self.requests: dict[tuple[str, int], int] = {}
        self.rows = 0
        self.row_errors = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.batch_rows = Histogram(SIZE_BUCKETS)
        self.batch_requests = Histogram(SIZE_BUCKETS)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.model_seconds = Histogram(LATENCY_BUCKETS)

    # -- updates ---------------------------------------------------------------------------------------------
    def request(self, path: str, status: int, seconds: float) -> None:
        """One answered HTTP request (any route); ``/predict`` ones also feed the latency figures."""
        route = path if path in self.routes else "other"
        self.requests[route, status] = self.requests.get((route, status), 0) + 1
        if route == "/predict":
            self.latency.observe(seconds)
            self.recent.append(seconds)

    def answered(self, rows: int, row_errors: int) -> None:
        """A /predict request's rows were answered (``row_errors`` of them with an ``error``)."""
        self.rows += rows
        self.row_errors += row_errors

    def batch(self, rows: int, requests: int, waits: Sequence[float], model_seconds: float) -> None:
        """One model call over ``rows`` rows gathered from ``requests`` requests, each queued ``waits`` seconds."""
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        for wait in waits:
            self.queue_wait.observe(wait)
        self.model_seconds.observe(model_seconds)

    # -- exposition ------------------------------------------------------------------------------------------
    def render(self) -> str:
        """The text exposition format: ``# HELP``, ``# TYPE`` and samples, one family after another."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

        family(
            "finexp_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
            [
                f"finexp_requests_total{_labels([('path', p), ('status', str(s))])} {n}"
                for (p, s), n in sorted(self.requests.items())
            ],
        )
        family("finexp_rows_total", "counter", "Rows answered by /predict.", [f"finexp_rows_total {self.rows}"])
        family(
            "finexp_row_errors_total",
            "counter",
            "Rows answered with an error in place of a prediction.",
            [f"finexp_row_errors_total {self.row_errors}"],
        )
        name = "finexp_request_duration_seconds"
        family(name, "histogram", "Latency of /predict requests, arrival to answer.", self.latency.lines(name))
        name = "finexp_request_latency_seconds"
        ordered = sorted(self.recent)
        quantiles = [
            f'{name}{{quantile="{q}"}} {_number(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)])}'
            for q in QUANTILES
            if ordered
        ]
        family(
            name,
            "summary",
            f"Latency quantiles of the last {RECENT} /predict requests.",
            [*quantiles, f"{name}_sum {_number(sum(ordered))}", f"{name}_count {len(ordered)}"],
        )
        for name, histogram, text in (
            ("finexp_batch_rows", self.batch_rows, "Rows per model call (a micro-batch)."),
            ("finexp_batch_requests", self.batch_requests, "Requests gathered into one model call."),
            ("finexp_queue_wait_seconds", self.queue_wait, "Time a request waited in the queue before its batch."),
            ("finexp_model_duration_seconds", self.model_seconds, "Time of one model call (rows to answers)."),
        ):
            family(name, "histogram", text, histogram.lines(name))
        waiting, waiting_rows = self.queue_depth()
        family("finexp_queue_requests", "gauge", "Requests queued for the model.", [f"finexp_queue_requests {waiting}"])
        family("finexp_queue_rows", "gauge", "Rows waiting for the model.", [f"finexp_queue_rows {waiting_rows}"])
        family(
            "finexp_start_time_seconds",
            "gauge",
            "When the server started (Unix time).",
            [f"finexp_start_time_seconds {_number(round(self.started, 3))}"],
        )
        return "\n".join(out) + "\n"
