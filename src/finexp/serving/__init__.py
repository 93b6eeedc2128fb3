"""finexp's model server (``finexp-serve``): a FastAPI app whose ``/predict`` scores concurrent requests together.

- :mod:`finexp.serving.app`: :func:`create_app` (routes ``/predict``, ``/health``, ``/metadata``, ``/metrics``),
  :func:`score_rows`, :func:`start_in_thread`
- :mod:`finexp.serving.batcher`: :class:`MicroBatcher`, dynamic micro-batches across requests
- :mod:`finexp.serving.limits`: bounded request reading (bytes, time, JSON depth and strings)
- :mod:`finexp.serving.security`: API keys, the gate around every route (key, access log, metrics), /metadata
  without server paths
- :mod:`finexp.serving.metrics`: the Prometheus text format of ``/metrics``
- :mod:`finexp.serving.onnx`: ONNX Runtime as the backend (``serve.onnx``)

Why an asyncio batcher inside the FastAPI app rather than LitServe: LitServe would be a new dependency and its own
server (worker processes fed through queues, its own request decoding and authentication), so the hardened request
path finexp-serve already has — the streamed body limit checked before a byte past it is read, the JSON depth and
string limits, the per-request deadline, the constant-time API-key gate and the access log, all tested on a real
port — would have to be rebuilt on its hooks and tested again. A batcher in the app keeps that path unchanged and
adds one worker task: one process, one copy of the model's weights, and a batch is simply one call of the same
``score_rows`` on more rows. LitServe's strengths (several worker processes or GPUs per server, streaming) matter
less for a classifier scored on CPU, where more processes would compete for the same cores; several finexp-serve
processes behind a load balancer give that scale-out when it is needed.

Nothing here imports torch or transformers: the model arrives built (:mod:`finexp.inference`), so ``finexp-serve
--help`` stays quick.
"""

from __future__ import annotations

from finexp.serving.app import create_app, score_rows, start_in_thread
from finexp.serving.batcher import BatcherClosed, MicroBatcher
from finexp.serving.metrics import ServingMetrics
from finexp.serving.security import public_metadata, read_api_keys

__all__ = [
    "BatcherClosed",
    "MicroBatcher",
    "ServingMetrics",
    "create_app",
    "public_metadata",
    "read_api_keys",
    "score_rows",
    "start_in_thread",
]
