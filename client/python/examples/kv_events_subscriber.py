#!/usr/bin/env python3
"""Follows kvtierd's KV events over ZeroMQ (vLLM-style wire format) and keeps a view of which blocks each
tier holds, as a cache-aware router would. Needs pyzmq and msgpack.

    kvtierd --cache_policy.kv_events_zmq_endpoint=tcp://*:5557 ...
    python3 kv_events_subscriber.py tcp://127.0.0.1:5557

Messages are [topic, seq (8 bytes big-endian), payload]; the payload is [ts, [event, ...]] with events
    ["BlockStored", [key], parent | None, [token ids], block_size, lora_id, medium, lora_name]
    ["BlockRemoved", [key], medium]
    ["AllBlocksCleared"]
where keys are 16-byte kvtier block keys (docs/block_hash.md: compute them with kvtier.block_hash) and
medium is "GPU", "CPU" (host tier) or "DISK" (SSD tier). See docs/cache_policy.md.
"""
import sys

import msgpack
import zmq


class KvView:
    """Which medium holds each block key, from the event stream; detects gaps by sequence number."""

    def __init__(self):
        self.where = {}  # key (bytes) -> medium
        self.next_seq = None
        self.gaps = 0

    def apply(self, seq, payload):
        if self.next_seq is not None and seq != self.next_seq:
            self.gaps += 1  # missed batches: the view may be stale until the next AllBlocksCleared resync
        self.next_seq = seq + 1
        ts, events = msgpack.unpackb(payload, raw=False)[:2]
        for ev in events:
            kind = ev[0]
            if kind == "BlockStored":
                for key in ev[1]:
                    self.where[bytes(key)] = ev[6]
            elif kind == "BlockRemoved":
                for key in ev[1]:
                    if self.where.get(bytes(key)) == ev[2]:
                        del self.where[bytes(key)]
            elif kind == "AllBlocksCleared":
                self.where.clear()
        return ts, events

    def count(self, medium):
        return sum(1 for m in self.where.values() if m == medium)


def main():
    endpoint = sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5557"
    topic = sys.argv[2].encode() if len(sys.argv) > 2 else b""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    view = KvView()
    while True:
        _, seq, payload = sock.recv_multipart()
        ts, events = view.apply(int.from_bytes(seq, "big"), payload)
        print(f"seq {int.from_bytes(seq, 'big')} ts {ts:.3f}: {len(events)} events; "
              f"GPU {view.count('GPU')} CPU {view.count('CPU')} DISK {view.count('DISK')} gaps {view.gaps}",
              flush=True)


if __name__ == "__main__":
    main()
