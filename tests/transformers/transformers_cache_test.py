"""kvtier.transformers against a real kvtierd on the host device, with a tiny random Llama (GQA).

- fp16 pages: greedy generate() with KvTierCache equals transformers' DynamicCache token for token, on the
  compatible path (SDPA over dequantized K/V) and on the fast path (attn_implementation="kvtier": the
  daemon's paged attention over the pool), without and with a prefix hit, after the prefix was paged out
  to host and to SSD and back, and across two engine processes (one killed while the other runs).
- int8 / fp8 pages: logits within a stated bound of the fp16 run.
Run by ctest (env: KVTIERD); exits 77 (ctest: skipped) when torch or transformers is missing.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

try:
    import torch
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover
    print(f"SKIPPED: {e} (scripts/setup.sh installs torch and transformers)")
    sys.exit(77)

from tiny_llama import DEVICE, HERE, build_model, greedy, prompt, teacher_forced

if DEVICE == "cuda" and not torch.cuda.is_available():
    print("SKIPPED: KVTIER_TEST_DEVICE=cuda but torch sees no GPU")
    sys.exit(77)

import kvtier  # noqa: E402
from kvtier.transformers import (DaemonCalibration, KvStatsRecorder, KvTierCache, precision_policy,  # noqa: E402
                                 register_attention)
from transformers import DynamicCache  # noqa: E402

NEW = 16
FP16 = precision_policy("fp16", "fp16")  # fp16 pages in every tier: exact round trips
# Bounds on the logits of quantized pages vs fp16 pages (teacher-forced, every step), relative to the fp16
# logits' max magnitude, default-init model. Measured worst cases are in docs/transformers.md; the bounds
# leave about 2x headroom.
LOGIT_BOUNDS = {"int8": 0.015, "fp8_e4m3": 0.06, "fp8_e5m2": 0.12}


class Daemon:
    def __init__(self, ssd=False):
        self.dir = tempfile.mkdtemp(prefix="kvtier-hf-")
        self.socket = os.path.join(self.dir, "kvtierd.sock")
        self.log = open(os.path.join(self.dir, "kvtierd.log"), "w")
        args = [os.environ["KVTIERD"], f"--socket_path={self.socket}"]
        if ssd:
            args += [f"--ssd_dir={os.path.join(self.dir, 'ssd')}", f"--limits.ssd_tier_bytes={64 << 20}"]
        self.proc = subprocess.Popen(args, stderr=self.log)
        for _ in range(1000):
            if os.path.exists(self.socket):
                break
            time.sleep(0.01)

    def client(self, name="hf-test"):
        return kvtier.Client(target="unix:" + self.socket, client_name=name)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.dir)
        return rc


class TransformersCacheTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        register_attention()
        cls.model = build_model()
        cls.refs = {}

    def setUp(self):
        self.daemon = Daemon(ssd=True)
        self.client = self.daemon.client()
        self.model.set_attn_implementation("sdpa")

    def tearDown(self):
        self.client.close()
        self.assertEqual(self.daemon.stop(), 0)

    def reference(self, ids):
        key = tuple(ids[0].tolist())
        if key not in self.refs:
            self.model.set_attn_implementation("sdpa")
            self.refs[key] = greedy(self.model, ids, DynamicCache(config=self.model.config), NEW)
        return self.refs[key]

    def run_kvtier(self, ids, attn, policy=FP16, expect_prefix=None, data_path="rpc"):
        self.model.set_attn_implementation(attn)
        cache = KvTierCache(self.model.config, self.client, policy=policy, data_path=data_path)
        try:
            n = cache.load_prefix(ids)
            if expect_prefix is not None:
                self.assertEqual(n, expect_prefix)
            tokens, logits = greedy(self.model, ids, cache, NEW)
            self.assertEqual(cache.get_seq_length(), ids.shape[1] + NEW - 1)
            return tokens, logits, dict(cache.stats)
        finally:
            cache.release()

    def test_fp16_pages_match_dynamic_cache_without_and_with_prefix_hit(self):
        for attn, seed in (("sdpa", 1), ("kvtier", 2)):
            with self.subTest(attn=attn):
                ids = prompt(45, seed)
                ref_tokens, ref_logits = self.reference(ids)
                tokens, logits, stats = self.run_kvtier(ids, attn, expect_prefix=0)
                self.assertEqual(tokens, ref_tokens)
                # prompt 45 + 15 cached generated tokens = 60: 3 full blocks committed (generated ones included)
                self.assertEqual(stats["committed_blocks"], 3)
                if attn == "kvtier":
                    self.assertEqual(stats["read_pages"], 0)  # no dequantized copy on the fast path
                    self.assertEqual(stats["attend_calls"], 3 * NEW)
                else:
                    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)  # identical K/V, identical math
                # A second request for the same prompt hits 2 blocks (32 tokens; 45 - 1 usable) and prefills 13.
                tokens, logits, stats = self.run_kvtier(ids, attn, expect_prefix=32)
                self.assertEqual(tokens, ref_tokens)
                self.assertLess((logits - ref_logits).abs().max().item(), 0.02 * ref_logits.abs().max().item())
                # A longer prompt sharing the cached prefix (and generated continuation) hits 3 blocks.
                longer = torch.cat([ids, torch.tensor([ref_tokens]), prompt(5, seed + 50)], dim=1)  # on the CPU
                ref_tokens2, _ = self.reference(longer)
                tokens, _, stats = self.run_kvtier(longer, attn, expect_prefix=48)
                self.assertEqual(tokens, ref_tokens2)

    def test_pool_data_path_matches_dynamic_cache_through_every_tier(self):
        # The mapped pool (memfd on the host device, CUDA VMM on the GPU machine): K/V scattered into the
        # pages in place and gathered back per layer; the same tokens and logits as DynamicCache, with and
        # without a prefix hit, and after the prefix went to host and SSD and came back through page-in.
        ids = prompt(70, 4)
        ref_tokens, ref_logits = self.reference(ids)
        tokens, logits, stats = self.run_kvtier(ids, "sdpa", expect_prefix=0, data_path="pool")
        self.assertEqual(tokens, ref_tokens)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)  # identical K/V, identical math
        self.assertGreater(stats["written_pages"], 0)
        self.assertEqual(stats["committed_blocks"], (70 + NEW - 1) // 16)
        layout = KvTierCache(self.model.config, self.client, policy=FP16).layout
        for tier in ("gpu", "host", "ssd"):
            with self.subTest(tier=tier):
                if tier != "gpu":
                    self.assertGreaterEqual(self.client.evict("gpu").blocks_moved, 4)
                if tier == "ssd":
                    self.assertGreaterEqual(self.client.evict("host").blocks_moved, 4)
                want = {"gpu": kvtier.v1.kvtier_pb2.TIER_GPU, "host": kvtier.v1.kvtier_pb2.TIER_HOST,
                        "ssd": kvtier.v1.kvtier_pb2.TIER_SSD}[tier]
                self.assertTrue(all(b.tier == want for b in self.client.lookup(layout, ids[0].tolist()).blocks))
                tokens, logits, stats = self.run_kvtier(ids, "sdpa", expect_prefix=64, data_path="pool")
                self.assertEqual(tokens, ref_tokens)
                self.assertEqual(stats["prefix_tiers"], [kvtier.v1.kvtier_pb2.Tier.Name(want)])
                self.assertGreaterEqual(stats["read_pages"], 4)  # the prefix came out of the pool's pages
                self.assertLess((logits - ref_logits).abs().max().item(), 0.02 * ref_logits.abs().max().item())
        # The fast path on the pool: kvtier's kernels run in this process over the mapped pages (decode, and
        # prefix-extend for the prompt's uncached rows), no gather; same tokens as DynamicCache.
        for expect in (64, 64):
            tokens, logits, stats = self.run_kvtier(ids, "kvtier", expect_prefix=expect, data_path="pool")
            self.assertEqual(tokens, ref_tokens)
            self.assertEqual(stats["read_pages"], 0)  # no dequantized copy
            self.assertEqual(stats["attend_calls"], 3 * NEW)  # 3 layers, NEW forward steps
            self.assertLess((logits - ref_logits).abs().max().item(), 0.02 * ref_logits.abs().max().item())
        fresh = prompt(50, 11)
        ref_fresh, _ = self.reference(fresh)
        tokens, _, _ = self.run_kvtier(fresh, "kvtier", expect_prefix=0, data_path="pool")
        self.assertEqual(tokens, ref_fresh)
        # A quantized resident format cannot be scattered into in place: refused with a clear error.
        with self.assertRaisesRegex(ValueError, "resident pages"):
            KvTierCache(self.model.config, self.client, policy=precision_policy("int8", "int8"), data_path="pool")

    def test_prefix_paged_out_to_host_and_ssd_and_back(self):
        ids = prompt(70, 3)
        ref_tokens, _ = self.reference(ids)
        tokens, _, _ = self.run_kvtier(ids, "kvtier", expect_prefix=0)
        self.assertEqual(tokens, ref_tokens)
        for tier in ("host", "ssd"):
            for attn in ("sdpa", "kvtier"):
                with self.subTest(tier=tier, attn=attn):
                    moved = self.client.evict("gpu").blocks_moved
                    self.assertGreaterEqual(moved, 4)
                    if tier == "ssd":
                        self.assertGreaterEqual(self.client.evict("host").blocks_moved, 4)
                    where = self.client.lookup(KvTierCache(self.model.config, self.client, policy=FP16).layout,
                                               ids[0].tolist())
                    want = kvtier.v1.kvtier_pb2.TIER_HOST if tier == "host" else kvtier.v1.kvtier_pb2.TIER_SSD
                    self.assertTrue(all(b.tier == want for b in where.blocks), where)
                    tokens, _, stats = self.run_kvtier(ids, attn, expect_prefix=64)
                    self.assertEqual(tokens, ref_tokens)
                    # found below the GPU tier, paged in on the background thread while prefill started
                    self.assertEqual(stats["prefix_tiers"], ["TIER_HOST" if tier == "host" else "TIER_SSD"])
        st = self.client.stats()
        self.assertGreater(st.ssd_writes, 0)
        self.assertGreater(st.ssd_reads, 0)
        self.assertGreater(st.page_ins, 0)

    def test_quantized_pages_logits_within_bound(self):
        # The default Llama init (std 0.02): the std-0.2 model of the other tests amplifies any K/V perturbation
        # into its logits several-fold, which says more about that model than about the formats.
        model = build_model(init_std=0.02)
        worst = {}
        for seed in (20, 21):
            ids = prompt(50, seed)
            model.set_attn_implementation("sdpa")
            cache = KvTierCache(model.config, self.client, policy=FP16)
            cache.load_prefix(ids)
            tokens, _ = greedy(model, ids, cache, NEW)
            cache.release()
            cache = KvTierCache(model.config, self.client, policy=FP16)
            self.assertEqual(cache.load_prefix(ids), 48)
            ref = teacher_forced(model, ids, cache, tokens[:-1])
            cache.release()
            scale = ref.abs().max().item()
            for fmt in LOGIT_BOUNDS:
                # Fresh quantized pages on both paths (nothing committed by the first), then prefix hits.
                for attn, hit in (("sdpa", False), ("kvtier", False), ("sdpa", True), ("kvtier", True)):
                    model.set_attn_implementation(attn)
                    cache = KvTierCache(model.config, self.client, policy=precision_policy(fmt, fmt),
                                        commit=attn == "kvtier" or hit)
                    self.assertEqual(cache.load_prefix(ids), 48 if hit else 0)
                    logits = teacher_forced(model, ids, cache, tokens[:-1])
                    cache.observe_tokens(ids)  # commits the prompt's blocks (when commit is on)
                    cache.release()
                    err = (logits - ref).abs().max().item() / scale
                    worst[fmt] = max(worst.get(fmt, 0.0), err)
                    self.assertGreater(err, 0.0)  # the pages really were quantized
                    self.assertLess(err, LOGIT_BOUNDS[fmt], (fmt, attn, hit, seed))
        print("worst max|dlogit| / max|logit| over", NEW, "teacher-forced steps:",
              {k: round(v, 4) for k, v in worst.items()})

    def test_two_engine_processes_share_a_prefix_and_survive_a_kill(self):
        shared, own = 40, 20
        env = dict(os.environ)
        worker = [sys.executable, os.path.join(HERE, "engine_worker.py"), self.daemon.socket]

        def expected(seed):
            return self.reference(torch.cat([prompt(shared, 1000), prompt(own, seed)], dim=1))[0]

        a = subprocess.Popen(worker + ["11", str(shared), str(own), str(NEW), "kvtier", "--hold"],
                             stdout=subprocess.PIPE, text=True, env=env, cwd=HERE)
        try:
            first = json.loads(a.stdout.readline())
            self.assertEqual(first["prefix_tokens"], 0)
            done_a = json.loads(a.stdout.readline())
            self.assertEqual(done_a["tokens"], expected(11))
            b = subprocess.Popen(worker + ["12", str(shared), str(own), str(NEW), "sdpa"], stdout=subprocess.PIPE,
                                 text=True, env=env, cwd=HERE)
            first_b = json.loads(b.stdout.readline())
            self.assertEqual(first_b["prefix_tokens"], 32)  # A's two shared full blocks
            a.send_signal(signal.SIGKILL)                  # while B generates over them
            a.wait(timeout=30)
            out_b, _ = b.communicate(timeout=400)
            self.assertEqual(b.returncode, 0)
            done_b = json.loads(out_b.strip().splitlines()[-1])
            self.assertEqual(done_b["tokens"], expected(12))
            self.assertEqual(done_b["stats"]["deduplicated_blocks"], 0)
        finally:
            if a.poll() is None:
                a.kill()
                a.wait()
            a.stdout.close()
        # A's session is gone (its pins and private blocks with it); what it committed is still shared.
        for _ in range(500):
            if self.client.stats().sessions == 1:
                break
            time.sleep(0.02)
        self.assertEqual(self.client.stats().sessions, 1)
        c = subprocess.run(worker + ["13", str(shared), str(own), str(NEW), "kvtier"], capture_output=True, text=True,
                           env=env, cwd=HERE, timeout=400)
        self.assertEqual(c.returncode, 0, c.stderr)
        lines = [json.loads(x) for x in c.stdout.strip().splitlines()]
        self.assertEqual(lines[0]["prefix_tokens"], 32)
        self.assertEqual(lines[1]["tokens"], expected(13))

    def test_calibration_observer_sees_every_token(self):
        rec = KvStatsRecorder(3, 2, 64)
        self.model.set_attn_implementation("kvtier")
        cache = KvTierCache(self.model.config, self.client, policy=FP16, observer=rec)
        ids = prompt(30, 5)
        cache.load_prefix(ids)
        greedy(self.model, ids, cache, 4)
        cache.release()
        stats = rec.export()
        self.assertEqual(stats["tokens"], [33, 33, 33])
        self.assertTrue(all(x > 0 for row in stats["k_channel_absmax"][0] for x in row))
        self.assertTrue(all(p <= m for p, m in zip(stats["v_percentile"][2], stats["v_absmax"][2])))

    def test_daemon_calibration_sees_the_engine_kv(self):
        self.model.set_attn_implementation("kvtier")
        cache = KvTierCache(self.model.config, self.client, policy=FP16)
        if not hasattr(kvtier.v1.kvtier_pb2, "StartCalibrationRequest"):
            with self.assertRaises(NotImplementedError):
                DaemonCalibration(cache)
            self.skipTest("kvtier.v1 has no calibration RPCs yet")
        ids = prompt(40, 8)
        with DaemonCalibration(cache) as cal:
            cache.load_prefix(ids)
            greedy(self.model, ids, cache, 4)
        cache.release()
        self.assertGreaterEqual(cal.token_count, 43)
        scales = cal.export()
        self.assertIn(b"version: 1", scales)

    def test_bad_use_fails_clearly(self):
        cache = KvTierCache(self.model.config, self.client, policy=FP16)
        with self.assertRaises(ValueError):
            cache.update(torch.zeros(2, 2, 1, 64, dtype=torch.float16), torch.zeros(2, 2, 1, 64, dtype=torch.float16),
                         0)
        with self.assertRaises(ValueError):
            cache.update(torch.zeros(1, 3, 1, 64, dtype=torch.float16), torch.zeros(1, 3, 1, 64, dtype=torch.float16),
                         0)
        cache.load_prefix(prompt(20, 6))
        kv = torch.zeros(1, 2, 20, 64, dtype=torch.float16)
        cache.update(kv, kv, 0)
        self.assertEqual(cache.get_seq_length(0), 20)
        with self.assertRaises(RuntimeError):
            cache.load_prefix(prompt(20, 6))  # only into an empty cache
        with self.assertRaises(ValueError):
            cache.observe_tokens(prompt(20, 7))  # disagrees with the prompt it holds
        with self.assertRaises(NotImplementedError):
            cache.crop(-1)
        # Blocks of another session are not reachable: the daemon's NOT_FOUND surfaces as KvTierError.
        other = self.daemon.client("other")
        try:
            with self.assertRaises(kvtier.KvTierError) as e:
                other.read_blocks(cache.block_ids or [1])
            self.assertEqual(e.exception.code.name, "NOT_FOUND")
        finally:
            other.close()
        cache.release()


if __name__ == "__main__":
    unittest.main()
