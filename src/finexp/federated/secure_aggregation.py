"""``federated.secure_aggregation=true``: Flower's SecAgg+ (Bell et al. 2020) between the coordinator and the nodes,
so the coordinator learns only the row-weighted mean of the nodes' parameters, never one node's.

flwr 1.32 ships SecAgg+ as a workflow of its legacy ServerApp (``SecAggPlusWorkflow``, driven by a
``flwr.server.strategy`` strategy through a ``LegacyContext``) and a client mod (``secaggplus_mod``) that reads the
legacy ``FitRes`` layout. This module bridges them to finexp's Message-API rounds, and nothing else:

- the coordinator's Message-API strategy still samples the nodes and builds their train messages
  (``configure_train``: global parameters, ``server-round``, FedProx's ``proximal-mu``); :class:`_Bridge` hands
  exactly those to the workflow as its legacy strategy, and takes back the mean the workflow unmasked;
- the workflow runs its four stages over the round's grid (key setup, key shares, masked vectors, unmasking);
- on each node, :func:`secure_aggregation_mod` runs ``secaggplus_mod`` on SecAgg+ messages, and finexp's ClientApp
  answers the masked-vectors stage in the legacy layout (:func:`legacy_train_reply`);
- the Message-API strategy aggregates the unmasked mean as one reply (FedAvg, FedProx: the mean itself; FedAdam,
  FedYogi: their server step on it). Strategies that need each update (Krum, Bulyan, medians) are refused.

Masking is over quantized, clipped *parameters* (each in ``[-clipping_range, clipping_range]``, ``quantization_range``
levels), weighted by ``rows / max_weight``: a node may hold at most ``max_weight`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from finexp import FinexpError

LEGACY_PARAMETERS = "fitins.parameters"  # what marks the legacy train message of SecAgg+'s masked-vectors stage


@dataclass
class SecureAggregation:
    """SecAgg+ settings (Flower's ``SecAggPlusWorkflow``).

    Args:
        num_shares: nodes each node's key is shared with; a float: that share of the sampled nodes (1.0: all).
        reconstruction_threshold: shares needed to rebuild a dropped node's key; a float: that share of num_shares.
        max_weight: the most rows a node may hold (``federated.secure_max_rows``): its parameters are scaled by
            rows / max_weight before quantizing, so the mean's error is about ``nodes * 2 * clipping_range /
            quantization_range * max_weight / total rows``.
        clipping_range: parameters are clipped to ``[-clipping_range, clipping_range]`` before quantizing.
        quantization_range: quantization levels (2**22: steps of ``2 * clipping_range / 2**22``).
        timeout: seconds each stage waits for the nodes.
    """

    num_shares: float = 1.0
    reconstruction_threshold: float = 0.7
    max_weight: float = 1000.0
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    timeout: float | None = None

    def mean(self, grid: Any, messages: Sequence[Message], names: Sequence[str], server_round: int) -> Any:
        """The row-weighted mean of the sampled nodes' new parameters, unmasked by SecAgg+.

        Returns:
            ``(arrays, metrics, rows)``: the mean (in ``names`` order), each contributing node's metrics by node id
            (sent in the clear beside its masked vector: ``node``, ``train_loss``, DP-SGD's ``privacy-*``), and
            their total rows.
        """
        from flwr.common import FitIns, ndarrays_to_parameters
        from flwr.compat.common import recorddict_compat as compat
        from flwr.server.client_manager import SimpleClientManager
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.server_config import ServerConfig
        from flwr.server.workflow import SecAggPlusWorkflow
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
        from flwr.server.workflow.constant import Key as WorkflowKey

        from finexp.federated.arrays import ordered

        fitins = {}
        for message in messages:
            (arrays,) = message.content.array_records.values()
            config = dict(next(iter(message.content.config_records.values()), ConfigRecord()))
            config["finexp-max-rows"] = self.max_weight  # the node refuses to weigh more (it would overflow)
            fitins[message.metadata.dst_node_id] = FitIns(ndarrays_to_parameters(ordered(arrays, names)), config)
        bridge = _bridge(fitins)
        base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
        context = LegacyContext(base, ServerConfig(num_rounds=server_round), bridge, SimpleClientManager())
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            next(iter(fitins.values())).parameters, keep_input=True
        )
        workflow = SecAggPlusWorkflow(
            num_shares=self.num_shares,
            reconstruction_threshold=self.reconstruction_threshold,
            max_weight=self.max_weight,
            clipping_range=self.clipping_range,
            quantization_range=self.quantization_range,
            timeout=self.timeout,
        )
        workflow(grid, context)
        if bridge.mean is None:
            raise FinexpError(
                f"round {server_round}: secure aggregation halted (too few nodes answered a SecAgg+ stage to unmask "
                "the sum; federated.secure_aggregation needs at least 2 nodes, and enough of them alive)"
            )
        # SecAgg+ dequantizes to float64; the global model keeps the parameters' own dtypes (and byte counts)
        (sent,) = messages[0].content.array_records.values()
        dtypes = [a.dtype for a in ordered(sent, names)]
        mean = [m.astype(dtype, copy=False) for m, dtype in zip(bridge.mean, dtypes, strict=True)]
        return mean, bridge.metrics, bridge.rows


def _bridge(fitins: dict[int, Any]) -> Any:
    """A legacy ``flwr.server.strategy.Strategy`` that hands SecAgg+ the Message-API strategy's train messages and
    keeps the unmasked mean the workflow passes back (defined here so the legacy classes load only with SecAgg+)."""
    from flwr.common import parameters_to_ndarrays
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import Strategy as LegacyStrategy

    class Proxy(ClientProxy):
        def __init__(self, node_id: int) -> None:
            super().__init__(str(node_id))
            self.node_id = node_id

        def get_properties(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def get_parameters(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def fit(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def reconnect(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    class Bridge(LegacyStrategy):
        def __init__(self) -> None:
            self.mean: list[np.ndarray] | None = None
            self.metrics: dict[int, dict[str, Any]] = {}
            self.rows = 0

        def initialize_parameters(self, client_manager: Any) -> Any:
            return None

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            return [(Proxy(node), ins) for node, ins in fitins.items()]

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            if results:  # every result carries the same unmasked mean (the workflow's backward compatibility)
                self.mean = parameters_to_ndarrays(results[0][1].parameters)
                self.metrics = {proxy.node_id: dict(res.metrics) for proxy, res in results}
                self.rows = sum(int(res.num_examples) for _, res in results)
            return (results[0][1].parameters if results else None), {}

        def configure_evaluate(self, *args: Any, **kwargs: Any) -> Any:
            return []

        def aggregate_evaluate(self, *args: Any, **kwargs: Any) -> Any:
            return None, {}

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            return None

    return Bridge()


def secure_aggregation_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ messages (they carry its config record); any other passes through."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def legacy_train_reply(message: Message, node: Any) -> Message:
    """The node's round for SecAgg+'s masked-vectors stage: legacy ``FitIns`` in, legacy ``FitRes`` out (which
    ``secaggplus_mod`` masks before anything leaves the node)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    arrays = dict(zip(node.names, parameters_to_ndarrays(fitins.parameters), strict=True))
    new, rows, metrics = node.train(arrays, dict(fitins.config))
    if rows > float(fitins.config.get("finexp-max-rows", math.inf)):
        raise FinexpError(
            f"node {node.name} holds {rows} training rows, more than federated.secure_max_rows="
            f"{fitins.config['finexp-max-rows']}: its weight would overflow SecAgg+'s quantization; raise it"
        )
    parameters = ndarrays_to_parameters([new[name] for name in node.names])
    reply = FitRes(Status(Code.OK, ""), parameters, rows, {**metrics, "node": node.name})
    return Message(compat.fitres_to_recorddict(reply, keep_input=True), reply_to=message)
