#!/usr/bin/env python3
"""JIT-compiles the FlashInfer modules bench_attention.py --flashinfer uses, on tiny inputs, so that the
timed run loads them from the cache (FLASHINFER_WORKSPACE_BASE) instead of compiling in the middle.
Usage: python3 fi_warm.py decode-fp16|decode-fp8|extend-fa3   (one module family per process, so several
can compile in parallel on the GPU machine's cores)."""
import sys
import time

import torch
import flashinfer as fi

what = sys.argv[1]
dev, HQ, HKV, D, BS = "cuda", 32, 8, 128, 16
ws = torch.zeros(64 * 1024 * 1024, dtype=torch.uint8, device=dev)
B, npg = 2, 4
indptr = torch.arange(0, B + 1, device=dev, dtype=torch.int32) * npg
indices = torch.arange(B * npg, device=dev, dtype=torch.int32)
last = torch.full((B,), BS, device=dev, dtype=torch.int32)
t0 = time.time()
if what.startswith("decode"):
    dt = torch.float16 if what == "decode-fp16" else torch.float8_e4m3fn
    pool = torch.randn(B * npg, 2, HKV, BS, D, device=dev).to(dt)
    q = torch.randn(B, HQ, D, device=dev, dtype=torch.float16)
    for tc in (False, True):
        w = fi.BatchDecodeWithPagedKVCacheWrapper(ws, "HND", use_tensor_cores=tc)
        w.plan(indptr, indices, last, HQ, HKV, D, BS, q_data_type=torch.float16, kv_data_type=dt)
        w.run(q, pool)
else:
    backend = what.split("-")[1]
    pool = torch.randn(B * npg, 2, HKV, BS, D, device=dev, dtype=torch.float16)
    n = 8
    qo = torch.arange(0, B + 1, device=dev, dtype=torch.int32) * n
    q = torch.randn(B * n, HQ, D, device=dev, dtype=torch.float16)
    w = fi.BatchPrefillWithPagedKVCacheWrapper(ws, "HND", backend=backend)
    w.plan(qo, indptr, indices, last, HQ, HKV, D, BS, causal=True, q_data_type=torch.float16,
           kv_data_type=torch.float16)
    w.run(q, pool)
torch.cuda.synchronize()
print(f"fi_warm {what}: {time.time() - t0:.0f} s", flush=True)
