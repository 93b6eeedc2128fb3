"""Flower ``Grid``s for finexp's coordinator: an in-memory one that runs ClientApps in this process, and a metering
wrapper around any grid (in-memory, simulation, a SuperLink's) that counts what crosses it.

A ``Grid`` is how a Message-API strategy reaches the nodes: ``push_messages`` / ``pull_messages`` /
``send_and_receive``. :class:`InProcessGrid` delivers each message straight to the ``ClientApp`` with the node's
``Context`` (so the in-process runtime runs exactly the app a SuperNode runs), turning an exception into the error
reply a SuperNode would send. :class:`MeteredGrid` records the bytes of parameters going down and up, which nodes
answered, and which failed (an error reply or no reply before the timeout).
"""

from __future__ import annotations

import copy
import math
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from finexp.federated.arrays import record_bytes


class InProcessGrid(Grid):
    """Flower's ``Grid`` over ClientApps in this process: one ``Context`` per node, messages handled in node order.

    Args:
        app: the ``ClientApp`` every node runs.
        contexts: each node's ``Context`` by node id (its ``node_config``, ``state`` kept across rounds).
        run_id: the run id stamped on messages.
    """

    def __init__(self, app: ClientApp, contexts: Mapping[int, Context], run_id: int = 1) -> None:
        self.app = app
        self.contexts = dict(contexts)
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return Run(**vars(self._run))

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver every message to its node's ClientApp now; the replies wait for :meth:`pull_messages`."""
        ids = []
        for message in sorted(messages, key=lambda m: m.metadata.dst_node_id):
            meta = message.metadata.__dict__  # what a SuperLink stamps on a message it accepts
            meta["_run_id"] = self._run.run_id
            meta["_src_node_id"] = SUPERLINK_NODE_ID
            meta["_message_id"] = str(uuid4())
            context = self.contexts.get(message.metadata.dst_node_id)
            if context is None:
                reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, "no such node"), reply_to=message)
            else:
                try:
                    # Each node gets its own copy, as over a wire: a strategy may send one content object to every
                    # node (SecAgg+ does), and a ClientApp may change what it received (secaggplus_mod does).
                    reply = self.app(copy.deepcopy(message), context)
                except Exception as err:
                    reason = "".join(traceback.format_exception_only(type(err), err)).strip()
                    reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages))))


@dataclass
class Traffic:
    """What crossed a :class:`MeteredGrid` since :meth:`MeteredGrid.reset`."""

    bytes_down: int = 0  # coordinator -> nodes (parameters)
    bytes_up: int = 0  # nodes -> coordinator
    answered: list[int] = field(default_factory=list)  # node ids with a content reply
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"node", "reason"}
    seconds: float = 0.0  # waiting for replies


class MeteredGrid(Grid):
    """Any ``Grid``, with the bytes, answers and failures of every ``send_and_receive`` recorded in :attr:`traffic`.

    ``send_and_receive`` pushes the messages and polls for replies every ``poll_interval`` seconds itself: Flower's
    gRPC grid sleeps 3 s between polls, which adds 1.5 s to every round on average (a pull is one small request to
    the SuperLink, so polling faster costs nothing that matters).
    """

    def __init__(self, grid: Grid, poll_interval: float = 0.1) -> None:
        self.grid = grid
        self.poll_interval = poll_interval
        self.traffic = Traffic()

    def reset(self) -> Traffic:
        """Start a new tally; returns the previous one."""
        done, self.traffic = self.traffic, Traffic()
        return done

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.traffic.bytes_down += sum(record_bytes(m.content) for m in messages)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        self._count(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        started = time.perf_counter()
        self.traffic.bytes_down += sum(record_bytes(m.content) for m in messages)
        waiting = set(self.grid.push_messages(messages))
        deadline = time.monotonic() + (timeout if timeout is not None else math.inf)
        replies: list[Message] = []
        while True:
            pulled = list(self.grid.pull_messages(sorted(waiting)))
            replies += pulled
            waiting -= {m.metadata.reply_to_message_id for m in pulled}
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)
        replies.sort(key=lambda m: m.metadata.src_node_id)
        self.traffic.seconds += time.perf_counter() - started
        self._count(replies)
        silent = {m.metadata.dst_node_id for m in messages} - {r.metadata.src_node_id for r in replies}
        for node in sorted(silent):
            self.traffic.failures.append({"node": node, "reason": f"no reply within {timeout} s"})
        return replies

    def _count(self, replies: list[Message]) -> None:
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.traffic.failures.append({"node": node, "reason": reply.error.reason or f"code {reply.error.code}"})
            else:
                self.traffic.bytes_up += record_bytes(reply.content)
                self.traffic.answered.append(node)
