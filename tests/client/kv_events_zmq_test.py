"""kvtierd's ZeroMQ KV-event publisher (vLLM-style wire format) checked by a consumer that decodes it on
its own with pyzmq + msgpack: the events name exactly the block keys the pure-Python block hash computes
for the prompt, with the right tokens, parent chain and medium, and a page-out shows up as moves
GPU -> CPU. Run by ctest (env: KVTIERD)."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import msgpack
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "client", "python"))
import kvtier  # noqa: E402
from kvtier import block_hash  # noqa: E402


class KvEventsZmqTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kvtier-zmq-")
        self.socket = os.path.join(self.dir, "kvtierd.sock")
        self.endpoint = "ipc://" + os.path.join(self.dir, "events.ipc")
        self.log = open(os.path.join(self.dir, "kvtierd.log"), "w")
        self.daemon = subprocess.Popen([os.environ["KVTIERD"], f"--socket_path={self.socket}",
                                        f"--cache_policy.kv_events_zmq_endpoint={self.endpoint}",
                                        "--cache_policy.kv_events_zmq_topic=kv"], stderr=self.log)
        for _ in range(500):
            if os.path.exists(self.socket):
                break
            time.sleep(0.01)
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.connect(self.endpoint)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"kv")
        self.sub.setsockopt(zmq.RCVTIMEO, 5000)
        self.client = kvtier.Client(target="unix:" + self.socket, client_name="zmq-test")

    def tearDown(self):
        self.client.close()
        self.sub.close(linger=0)
        self.daemon.terminate()
        self.daemon.wait(timeout=20)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def receive(self, want):
        """Decoded events until `want` arrived; checks frames and batch sequence numbers."""
        events, seqs = [], []
        while len(events) < want:
            frames = self.sub.recv_multipart()
            self.assertEqual(len(frames), 3)
            self.assertEqual(frames[0], b"kv")
            self.assertEqual(len(frames[1]), 8)
            seqs.append(int.from_bytes(frames[1], "big"))
            batch = msgpack.unpackb(frames[2], raw=False)
            self.assertIsInstance(batch[0], float)
            self.assertLess(abs(batch[0] - time.time()), 60)
            events.extend(batch[1])
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))))  # no gap
        return events

    def test_events_carry_the_keys_a_router_computes(self):
        time.sleep(0.3)  # let the subscription reach the publisher (PUB drops until then)
        layout = self.client.register_layout(num_layers=2, num_kv_heads=2, head_dim=64, block_size=16)
        tokens = [7 * i + 3 for i in range(48)]
        ids = self.client.allocate(layout, 3)
        self.client.write_blocks(ids, [bytes(layout.activation_page_bytes)] * 3)
        committed = self.client.commit(layout, ids, tokens)
        self.client.release([c[1] for c in committed])
        expected = block_hash.prefix_keys(layout.layout_id, b"default", 16, tokens)
        self.assertEqual([c[0] for c in committed], expected)  # Python keys == daemon keys

        stored = self.receive(3)
        self.assertEqual(len(stored), 3)
        for i, ev in enumerate(stored):
            self.assertEqual(ev[0], "BlockStored")
            self.assertEqual(len(ev), 8)
            self.assertEqual(ev[1], [expected[i]])
            self.assertEqual(ev[2], expected[i - 1] if i > 0 else None)
            self.assertEqual(ev[3], tokens[16 * i:16 * (i + 1)])
            self.assertEqual(ev[4], 16)
            self.assertEqual(ev[6], "GPU")

        self.client.evict("gpu")
        moved = self.receive(6)
        removed = [e for e in moved if e[0] == "BlockRemoved"]
        again = [e for e in moved if e[0] == "BlockStored"]
        self.assertEqual(sorted(k for e in removed for k in e[1]), sorted(expected))
        self.assertTrue(all(e[2] == "GPU" for e in removed))
        self.assertEqual(sorted(k for e in again for k in e[1]), sorted(expected))
        self.assertTrue(all(e[6] == "CPU" for e in again))

    def test_python_client_policy_calls(self):
        layout = self.client.register_layout(num_layers=2, num_kv_heads=2, head_dim=64, block_size=16)
        tokens = list(range(100, 132))
        ids = self.client.allocate(layout, 2)
        self.client.write_blocks(ids, [bytes(layout.activation_page_bytes)] * 2)
        self.client.release([c[1] for c in self.client.commit(layout, ids, tokens)])
        snap = self.client.kv_snapshot()
        stream = self.client.kv_events(start_seq=snap.next_seq)  # exactly what happens after the snapshot
        self.assertEqual(len(snap.blocks), 2)
        self.assertEqual({b.key for b in snap.blocks},
                         set(block_hash.prefix_keys(layout.layout_id, "default", 16, tokens)))
        with self.assertRaises(kvtier.KvTierError) as bad:
            self.client.pin_prefix(layout, tokens, ttl_ms=-1)
        self.assertEqual(bad.exception.code.name, "INVALID_ARGUMENT")
        pin = self.client.pin_prefix(layout, tokens, ttl_ms=60000)
        self.assertEqual(pin.blocks, 2)
        self.assertEqual(self.client.policy_stats().pins_active, 1)
        self.client.release_pin(pin.pin_id)
        self.client.evict("gpu")
        progress = list(self.client.warm(layout, [tokens], target="gpu"))
        self.assertEqual(progress[-1].blocks_in_target, 2)
        self.assertEqual(self.client.invalidate_prefix(layout, tokens[:16]).blocks_removed, 2)
        kinds = []
        for batch in stream:
            kinds += [e.type for e in batch.events]
            if len(kinds) >= 6:  # 2 moves down, 2 moves up, 2 removals
                break
        stream.cancel()
        self.assertEqual(kinds[-2:], [3, 3])  # KV_EVENT_REMOVED


if __name__ == "__main__":
    unittest.main()
