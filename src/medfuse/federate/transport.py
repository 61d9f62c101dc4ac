"""`LocalGrid`: a Flower `Grid` that runs the sites' `ClientApp`s in this process, byte-exact.

Flower's own simulation engine needs Ray, which is not installed here; a deployment runs
a SuperLink and SuperNodes over gRPC. This grid sits where either would: the server
workflow (`DefaultWorkflow`, `SecAggPlusWorkflow`) pushes `Message`s to it, and each
message is serialised with Flower's protobuf serde (what a gRPC link carries), decoded on
the other side, handed to the destination site's `ClientApp`, and the reply travels back
the same way. So the server only ever holds what came over the "wire", and `traffic` has
the exact wire size of every message, per round and direction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import Context, Message, RecordDict
from flwr.common import serde
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run

SERVER_NODE_ID = 0
RUN_ID = 1


@dataclass
class Transfer:
    """One message on the wire: its round (group id), the message type, the direction and size."""

    round: int
    message_type: str
    node_id: int
    direction: str  # "down": server -> site, "up": site -> server
    bytes: int


class LocalGrid(Grid):
    """Flower `Grid` over in-process `ClientApp`s (node id -> app), with byte counts per message.

    `keep_uplink=True` also keeps every decoded reply the server received (`uplink`), for
    audits of what left a site.
    """

    def __init__(self, apps: dict[int, object], keep_uplink: bool = False):
        self.apps = apps
        self._run = Run.create_empty(RUN_ID)
        self.contexts = {nid: Context(RUN_ID, nid, {}, RecordDict(), {}) for nid in apps}
        self.traffic: list[Transfer] = []
        self.keep_uplink = keep_uplink
        self.uplink: list[Message] = []
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its site's ClientApp (through protobuf both ways); keep the replies."""
        ids = []
        for msg in messages:
            meta = msg.metadata.__dict__  # the ids a SuperLink stamps on a message it accepts
            meta["_run_id"], meta["_src_node_id"], meta["_message_id"] = RUN_ID, SERVER_NODE_ID, str(uuid.uuid4())
            node = msg.metadata.dst_node_id
            rnd = int(msg.metadata.group_id) if str(msg.metadata.group_id).isdigit() else 0
            wire = serde.message_to_proto(msg)
            self.traffic.append(Transfer(rnd, msg.metadata.message_type, node, "down", wire.ByteSize()))
            reply = self.apps[node](serde.message_from_proto(wire), self.contexts[node])
            wire = serde.message_to_proto(reply)
            self.traffic.append(Transfer(rnd, msg.metadata.message_type, node, "up", wire.ByteSize()))
            if self.keep_uplink:  # a copy of its own: the server workflow empties what it consumes
                self.uplink.append(serde.message_from_proto(wire))
            self._replies[msg.metadata.message_id] = serde.message_from_proto(wire)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def bytes_per_round(self) -> dict[int, dict[str, int]]:
        """Round -> {"down": bytes, "up": bytes, "messages": n} (round 0: the initial parameter request)."""
        out: dict[int, dict[str, int]] = {}
        for t in self.traffic:
            row = out.setdefault(t.round, {"down": 0, "up": 0, "messages": 0})
            row[t.direction] += t.bytes
            row["messages"] += t.direction == "down"
        return out
