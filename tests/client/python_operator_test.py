"""The Python client's operator, prefetch, calibration and mapped-pool calls against a real kvtierd with
tenants (an engine tenant with pool access, a guest without) and an admin token. Run by ctest (env:
KVTIERD). Page contents are checked against the self-verifying oracle."""
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
from kvtier import pool as kvpool  # noqa: E402

SHAPE = dict(num_layers=2, num_kv_heads=2, head_dim=64, block_size=16)
ADMIN, ENGINE, GUEST = "admin-token-py", "engine-token-py", "guest-token-py"


def prompt_of(n, salt):
    return [(salt * 7919 + i * 31) % 50000 for i in range(n)]


class OperatorTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kvtier-pyop-")
        self.socket = os.path.join(self.dir, "kvtierd.sock")
        conf = os.path.join(self.dir, "kvtierd.conf")
        with open(conf, "w") as f:
            f.write(f'socket_path: "{self.socket}"\n'
                    f'ssd_dir: "{self.dir}/ssd"\n'
                    "limits { gpu_pool_bytes: 67108864 host_tier_bytes: 67108864 ssd_tier_bytes: 67108864 }\n"
                    f'admin_token: "{ADMIN}"\n'
                    f'tenants {{ name: "engine" token: "{ENGINE}" pool_access: true }}\n'
                    f'tenants {{ name: "guest" token: "{GUEST}" }}\n')
        self.log = open(os.path.join(self.dir, "kvtierd.log"), "w")
        self.daemon = subprocess.Popen([os.environ["KVTIERD"], f"--config={conf}"], stderr=self.log)
        deadline = time.time() + 60
        while not os.path.exists(self.socket):
            self.assertIsNone(self.daemon.poll(), "kvtierd exited at start")
            self.assertLess(time.time(), deadline, "kvtierd did not create its socket")
            time.sleep(0.01)
        target = "unix:" + self.socket
        self.admin = kvtier.Client(target=target, token=ADMIN, client_name="py-admin")
        self.engine = kvtier.Client(target=target, tenant="engine", token=ENGINE, client_name="py-engine")
        self.guest = kvtier.Client(target=target, tenant="guest", token=GUEST, client_name="py-guest")
        self.layout = self.engine.register_layout(**SHAPE, layer_names=["model.layers.0.self_attn",
                                                                       "model.layers.1.self_attn"])

    def tearDown(self):
        for c in (self.admin, self.engine, self.guest):
            c.close()
        self.daemon.send_signal(signal.SIGTERM)
        self.assertEqual(self.daemon.wait(timeout=30), 0)
        self.log.close()
        shutil.rmtree(self.dir)

    def write_prompt(self, prompt):
        bs = self.layout.block_size
        n = len(prompt) // bs
        ids = self.engine.allocate(self.layout, n)
        self.engine.write_blocks(ids, [self.page(prompt, b) for b in range(n)])
        results = self.engine.commit(self.layout, ids, prompt[:n * bs])
        self.engine.release([r[1] for r in results])
        return results

    def page(self, prompt, b):
        return oracle.activation_page(oracle.block_seed(prompt, 16, b), 2, 2, 64, 16)

    def values(self, prompt, b):
        return oracle.block_values(oracle.block_seed(prompt, 16, b), 2, 2, 64, 16).astype(np.float16)

    def assertStatus(self, code, fn, *args, **kwargs):
        with self.assertRaises(kvtier.KvTierError) as e:
            fn(*args, **kwargs)
        self.assertEqual(e.exception.code.name, code, e.exception.message)

    def test_admin_calls_need_the_admin_session(self):
        for call, args in ((self.guest.list_sessions, ()), (self.guest.set_tier_limits, (0, 1 << 26, 0)),
                           (self.guest.flush, ()), (self.guest.drain, ("gpu",)),
                           (self.guest.set_tenant_quota, ("guest", 1 << 20)), (self.guest.start_calibration, ()),
                           (self.engine.stop_calibration, ()), (self.engine.export_calibration, ())):
            self.assertStatus("PERMISSION_DENIED", call, *args)
        self.assertRaises(ValueError, self.admin.flush, "disk")  # refused before anything is sent

    def test_operator_resizes_flushes_drains_and_the_engine_prefetches_back(self):
        prompt = prompt_of(160, 1)
        self.assertEqual(len(self.write_prompt(prompt)), 10)
        sessions = {s.client_name: s for s in self.admin.list_sessions()}
        self.assertEqual(sessions["py-engine"].pid, os.getpid())
        self.assertEqual(sessions["py-engine"].tenant, "engine")
        limits = self.admin.set_tier_limits(host_bytes=48 << 20)
        self.assertEqual(limits.host_tier_bytes, 48 << 20)
        self.assertEqual(self.admin.set_tenant_quota("engine", gpu_bytes=32 << 20).quota.gpu_bytes, 32 << 20)
        self.assertStatus("INVALID_ARGUMENT", self.admin.set_tenant_quota, "engine", gpu_bytes=-1)

        flushed = self.admin.flush("ssd")
        self.assertEqual(flushed.blocks_written, 10)
        self.assertTrue(flushed.durable)
        drained = self.admin.drain("gpu")
        self.assertTrue(drained.drained)
        self.assertGreaterEqual(drained.blocks_moved, 10)
        self.assertStatus("INVALID_ARGUMENT", self.admin.drain, "gpu", wait_ms=-5)
        hit = self.engine.lookup(self.layout, prompt)
        self.assertEqual(len(hit.blocks), 10)
        self.assertTrue(all(b.tier != kvtier.v1.kvtier_pb2.TIER_GPU for b in hit.blocks))

        started = self.engine.prefetch(self.layout, tokens=prompt, pin=True)
        self.assertEqual(started.blocks_requested, 10)
        done = self.engine.get_prefetch(started.prefetch_id, wait_ms=20000)
        self.assertEqual(done.state, kvtier.v1.kvtier_pb2.PREFETCH_STATE_DONE)
        self.assertEqual(done.blocks_ready, 10)
        pages = self.engine.read_blocks([b.block_id for b in done.blocks])
        for b, page in enumerate(pages):  # back from int8: within the int8 bound of each segment
            want = self.values(prompt, b).astype(np.float32)
            got = np.frombuffer(page, dtype=np.float16).astype(np.float32).reshape(want.shape)
            absmax = np.abs(want).max(axis=(3, 4), keepdims=True)
            self.assertLess(float((np.abs(got - want) / absmax).max()), 0.5 / 127 + 2e-3)
        self.engine.release([b.block_id for b in done.blocks])
        self.assertStatus("NOT_FOUND", self.engine.get_prefetch, started.prefetch_id + 1000)
        # The engine's keys are unknown to the guest tenant: its prefetch ends at the first block.
        keys = [b.key for b in hit.blocks]
        other = self.guest.register_layout(**SHAPE, layer_names=["model.layers.0.self_attn",
                                                                 "model.layers.1.self_attn"])
        theirs = self.guest.prefetch(other, keys=keys)
        seen = self.guest.get_prefetch(theirs.prefetch_id, wait_ms=20000)
        self.assertEqual(seen.state, kvtier.v1.kvtier_pb2.PREFETCH_STATE_DONE)
        self.assertEqual(seen.blocks_ready, 0)
        self.assertEqual(seen.prefix_end, 0)

    def test_the_mapped_pool_shares_pages_with_the_daemon(self):
        prompt = prompt_of(64, 2)
        self.write_prompt(prompt)
        with self.engine.map_pool(self.layout) as pool:
            self.assertEqual(pool.shape, (2, 2, 2, 16, 64))
            hit = self.engine.lookup(self.layout, prompt, pin=True)
            self.assertEqual(len(hit.blocks), 4)
            for b, blk in enumerate(hit.blocks):  # the daemon's bytes, seen in place (fp16: exact)
                np.testing.assert_array_equal(pool.page_values(blk.slot), self.values(prompt, b))
            # The engine writes a block straight into the pool; the daemon serves those bytes.
            ((fresh, fresh_slot),) = self.engine.allocate_slots(self.layout, 1)
            other = prompt_of(16, 3)
            pool.page_values(fresh_slot)[...] = self.values(other, 0)
            self.assertEqual(self.engine.read_blocks([fresh])[0], self.page(other, 0))
            if _have_torch():
                import torch
                t = pool.page_tensor(fresh_slot)
                self.assertEqual(t.dtype, torch.float16)
                self.assertTrue(torch.equal(t, torch.from_numpy(self.values(other, 0))))
            self.assertRaises(IndexError, pool.page, pool.num_slots)
            self.engine.release([b.block_id for b in hit.blocks])
        # The guest tenant has no pool access; a ticket works once.
        self.assertStatus("PERMISSION_DENIED", self.guest.get_pool_handle, self.layout)
        handle = self.engine.get_pool_handle(self.layout)
        for fd in kvpool.fetch_fds(handle.fd_socket, handle.fd_ticket):
            os.close(fd)
        self.assertRaises(PermissionError, kvpool.fetch_fds, handle.fd_socket, handle.fd_ticket)
        self.assertRaises(ValueError, kvpool.fetch_fds, handle.fd_socket, b"short")
        self.assertStatus("NOT_FOUND", self.engine.get_pool_handle,
                          kvtier.Layout(self.layout.layout_id + 99, 2, 2, 64, 16, 0, 0, 0))

    def test_calibration_round_trip_and_static_scales(self):
        self.admin.start_calibration(self.layout)
        self.write_prompt(prompt_of(96, 4))
        stopped = self.admin.stop_calibration()
        self.assertEqual(len(stopped.layouts), 1)
        exported = self.admin.export_calibration(self.layout)
        self.assertGreater(exported.token_count, 0)
        self.assertIn(b"layers", exported.scales_file)
        loaded = self.admin.load_static_scales(self.layout, exported.scales_file, exclude=["model.layers.0.self_attn"])
        self.assertNotEqual(loaded.layout_id, self.layout.layout_id)
        self.assertEqual(list(loaded.static_layers), ["model.layers.1.self_attn"])
        self.assertStatus("INVALID_ARGUMENT", self.admin.load_static_scales, self.layout, "not a scales file {")


def _have_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    unittest.main()
