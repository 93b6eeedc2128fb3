"""finexp's Flower ``ClientApp``: the Message-API layer around a node's local training.

A ``train`` message carries the global trainable parameters as an ``ArrayRecord`` (one ``Array`` per parameter,
keyed by its name) and the strategy's ``ConfigRecord`` (``server-round``, FedProx's ``proximal-mu``). The reply
carries the node's new parameters under the same key and a ``MetricRecord`` with ``num-examples`` (what FedAvg
weighs by), ``train_loss`` and, with client DP, ``update_norm``. Nothing else crosses: not rows, not the frozen
weights.

The same app serves every runtime; only how it finds the node's :class:`~finexp.federated.client.LocalNode` differs
(``node_for``): in-process, a table of nodes sharing the run's module; in a deployment, a node built once per run
from the SuperNode's own config (:mod:`finexp.federated.deployment`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from finexp import FinexpError
from finexp.federated.arrays import from_record, to_record
from finexp.federated.client import LocalNode

NodeResolver = Callable[[Context], LocalNode]
# The node's own state between rounds, in its Flower Context.state (a SuperNode keeps it across the ClientApp
# processes it starts, one per message): DP-SGD's accountant history, flattened (noise, sample rate, steps, ...).
DP_SGD_STATE = "finexp-dp-sgd"


def _single(records: Mapping[str, object], kind: str) -> tuple[str, object]:
    if len(records) != 1:
        raise FinexpError(f"a finexp train message carries exactly one {kind}; got {sorted(records)}")
    return next(iter(records.items()))


def _load_history(context: Context) -> list[tuple]:
    record = context.state.config_records.get(DP_SGD_STATE)
    flat = list(record["history"]) if record is not None else []  # type: ignore[arg-type]
    return [(float(flat[i]), float(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]


def _save_history(context: Context, node: LocalNode) -> None:
    if node.dp_history:
        flat = [float(x) for entry in node.dp_history for x in entry]
        context.state[DP_SGD_STATE] = ConfigRecord({"history": flat})


def make_client_app(node_for: NodeResolver, mods: Sequence[Callable] = ()) -> ClientApp:
    """The ``ClientApp`` training whatever node ``node_for(context)`` names on each ``train`` message.

    SecAgg+ messages (``federated.secure_aggregation=true``) go through Flower's ``secaggplus_mod`` first
    (:func:`~finexp.federated.secure_aggregation.secure_aggregation_mod`, always in the chain: the coordinator
    decides, a node needs no setting of its own).

    Args:
        node_for: the node of the SuperNode (or in-process node) a message is addressed to.
        mods: more Flower mods around the handlers.
    """
    from finexp.federated.secure_aggregation import LEGACY_PARAMETERS, legacy_train_reply, secure_aggregation_mod

    app = ClientApp(mods=[secure_aggregation_mod, *mods])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        node = node_for(context)
        node.dp_history = _load_history(context)
        if LEGACY_PARAMETERS in message.content.array_records:  # SecAgg+'s masked-vectors stage
            reply = legacy_train_reply(message, node)
            _save_history(context, node)
            return reply
        key, arrays = _single(message.content.array_records, "ArrayRecord")
        configs = message.content.config_records
        config = dict(next(iter(configs.values()))) if configs else {}
        new, rows, metrics = node.train(from_record(arrays), config)  # type: ignore[arg-type]
        _save_history(context, node)
        content = RecordDict(
            {
                key: to_record(new),
                "metrics": MetricRecord({"num-examples": rows, **metrics}),
                "node": ConfigRecord({"name": node.name}),
            }
        )
        return Message(content, reply_to=message)

    return app
