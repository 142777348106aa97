"""The Python client against a real kvtierd, cross-checked with the C++ demo worker: Python writes a
prompt's KV with the Python oracle, the C++ worker finds and verifies it with the C++ oracle, and Python
reads it back after a page-out (int8) within the int8 bound. Run by ctest (env: KVTIERD, WORKER)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "client", "python"))
import kvtier  # noqa: E402
from kvtier import oracle  # noqa: E402

DEMO = dict(num_layers=8, num_kv_heads=4, head_dim=128, block_size=16, model_name="demo-llama-8L")


def demo_prompt(n, seed):
    """client/demo_worker.cc MakePrompt: token i = SplitMix64(seed + i) % 128000."""
    return [int(oracle.splitmix64(np.uint64(seed + i)) % np.uint64(128000)) for i in range(n)]


class PythonClientTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kvtier-py-")
        self.socket = os.path.join(self.dir, "kvtierd.sock")
        self.log = open(os.path.join(self.dir, "kvtierd.log"), "w")
        self.daemon = subprocess.Popen([os.environ["KVTIERD"], f"--socket_path={self.socket}"], stderr=self.log)
        for _ in range(500):
            if os.path.exists(self.socket):
                break
            time.sleep(0.01)
        self.client = kvtier.Client(target="unix:" + self.socket, client_name="py-test")

    def tearDown(self):
        self.client.close()
        self.daemon.send_signal(signal.SIGTERM)
        self.assertEqual(self.daemon.wait(timeout=20), 0)
        self.log.close()
        shutil.rmtree(self.dir)

    def write_prompt(self, layout, prompt):
        bs = layout.block_size
        n = len(prompt) // bs
        ids = self.client.allocate(layout, n)
        pages = [oracle.activation_page(oracle.block_seed(prompt, bs, b), layout.num_layers, layout.num_kv_heads,
                                        layout.head_dim, bs) for b in range(n)]
        self.client.write_blocks(ids, pages)
        results = self.client.commit(layout, ids, prompt[:n * bs])
        self.client.release([r[1] for r in results])
        return results

    def test_python_writes_cpp_verifies_and_python_reads_back_after_page_out(self):
        layout = self.client.register_layout(**DEMO)
        prompt = demo_prompt(1000, 7)
        results = self.write_prompt(layout, prompt)
        self.assertEqual(len(results), 62)
        # The C++ worker computes the same layout id, chain keys and oracle bytes.
        out = subprocess.run([os.environ["WORKER"], f"--socket={self.socket}", "--role=reader", "--tokens=1000",
                              "--extra=0", "--prompt_seed=7", "--name=cpp-reader"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        line = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(line["matched_blocks"], 62)
        self.assertEqual(line["bad_values"], 0)
        # Page everything out (fp16 -> int8) and read it back here.
        self.assertGreaterEqual(self.client.evict("gpu").blocks_moved, 62)
        hit = self.client.lookup(layout, prompt, promote=True)
        self.assertEqual(len(hit.blocks), 62)
        pages = self.client.read_blocks([b.block_id for b in hit.blocks])
        worst = 0.0
        for b, page in enumerate(pages):
            want = oracle.block_values(oracle.block_seed(prompt, 16, b), 8, 4, 128, 16)
            got = np.frombuffer(page, dtype=np.float16).astype(np.float32).reshape(want.shape)
            absmax = np.abs(want).max(axis=(3, 4), keepdims=True)  # per segment
            worst = max(worst, float((np.abs(got - want) / absmax).max()))
        self.assertGreater(worst, 0.0)              # it went through int8...
        self.assertLess(worst, 0.5 / 127 + 2e-3)    # ...and came back within the int8 bound
        self.client.release([b.block_id for b in hit.blocks])

    def test_errors_carry_the_status(self):
        layout = self.client.register_layout(**DEMO)
        with self.assertRaises(kvtier.KvTierError) as e:
            self.client.allocate(layout, 0)
        self.assertEqual(e.exception.code.name, "INVALID_ARGUMENT")
        with self.assertRaises(kvtier.KvTierError) as e:
            self.client.register_layout(num_layers=2, num_kv_heads=0, head_dim=64)
        self.assertEqual(e.exception.code.name, "INVALID_ARGUMENT")
        with self.assertRaises(kvtier.KvTierError) as e:
            self.client.read_blocks([123456789])
        self.assertEqual(e.exception.code.name, "NOT_FOUND")



class CudaPoolCoverageTest(unittest.TestCase):
    """The chunk-coverage arithmetic of a CUDA pool mapping (kvtier.pool), which needs no GPU: which slot
    pages lie in mapped chunks, with chunks that touch merged and pages straddling a gap refused."""

    def test_pages_in_mapped_chunks(self):
        from kvtier.pool import _CudaVmmMapping
        m = _CudaVmmMapping.__new__(_CudaVmmMapping)
        m._mapped = {}
        self.assertEqual(m.covered([0, 10], 10).tolist(), [False, False])
        m._mapped = {300: (100, 3), 0: (100, 1), 100: (50, 2)}  # [0, 150) in two touching chunks, [300, 400)
        got = m.covered(np.array([0, 95, 140, 141, 150, 290, 300, 390, 391]), 10).tolist()
        self.assertEqual(got, [True, True, True, False, False, False, True, True, False])


if __name__ == "__main__":
    unittest.main()
