#!/usr/bin/env python3
"""Where the time of one full prefix hit goes (the floor under ttft.py's hit cases).

Publishes one prompt (a miss), then times a GPU-tier hit a few times and profiles one more with cProfile
(Python side: RPCs, cache bookkeeping, the forward) and torch.profiler (CUDA kernels and copies). Prints
the wall time split into load_prefix (Lookup + pin) and the forward, and the top entries of both
profiles; writes them as text next to --out.

  python3 bench/transformers/profile_hit.py --kvtierd KVTIERD --device cuda --model llama3-8b --dtype bf16 \\
      --attn kvtier --length 32768 --out bench/results/.../profile_hit.txt
"""
import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))

import torch  # noqa: E402

import kvtier  # noqa: E402
from kvtier.transformers import KvTierCache, precision_policy, register_attention  # noqa: E402
from ttft import Daemon, MODELS, build_model, first_token, sync  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvtierd", required=True)
    ap.add_argument("--model", default="small", choices=sorted(MODELS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--attn", default="kvtier", choices=["kvtier", "sdpa"])
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    page_dtype = "bf16" if args.dtype == "bf16" else "fp16"
    register_attention()
    model = build_model(args.model, dtype, args.device, args.attn)
    text = model.config
    longest = args.length * text.num_hidden_layers * 2 * text.num_key_value_heads * text.head_dim * 2
    daemon = Daemon(args.kvtierd, ssd_bytes=64 << 20, host_bytes=max(64 << 20, 2 * longest),
                    gpu_bytes=max(64 << 20, 3 * longest))
    client = kvtier.Client(target="unix:" + daemon.socket, client_name="profile-hit", max_message_bytes=256 << 20)
    policy = precision_policy(page_dtype, "int8")
    ids = torch.randint(0, text.vocab_size, (1, args.length), generator=torch.Generator().manual_seed(1))
    ids = ids.to(args.device)
    report = io.StringIO()
    try:
        cache = KvTierCache(model.config, client, policy=policy, dtype=page_dtype, data_path="pool")
        cache.load_prefix(ids)
        first_token(model, ids, cache)
        cache.observe_tokens(ids)
        cache.release()

        def hit():
            t0 = time.perf_counter()
            c = KvTierCache(model.config, client, policy=policy, dtype=page_dtype, data_path="pool")
            prefix = c.load_prefix(ids)
            t1 = time.perf_counter()
            first_token(model, ids, c)
            sync(args.device)
            t2 = time.perf_counter()
            c.release()
            return prefix, (t1 - t0) * 1e3, (t2 - t1) * 1e3

        split = [hit() for _ in range(args.repeats)]
        print(f"{args.length} tokens, GPU-tier hit, attn={args.attn}: prefix {split[0][0]}, "
              f"load_prefix median {statistics.median(s[1] for s in split):.1f} ms, "
              f"forward median {statistics.median(s[2] for s in split):.1f} ms", file=report)
        prof = cProfile.Profile()
        prof.enable()
        hit()
        prof.disable()
        stats = io.StringIO()
        pstats.Stats(prof, stream=stats).sort_stats("cumulative").print_stats(30)
        print("\n== cProfile (cumulative)\n" + stats.getvalue(), file=report)
        if args.device == "cuda":
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                hit()
            print("== torch.profiler (by CUDA time)\n" +
                  p.key_averages().table(sort_by="cuda_time_total", row_limit=20), file=report)
    finally:
        client.close()
        daemon.stop()
    with open(args.out, "w") as f:
        f.write(report.getvalue())
    print(report.getvalue()[:3000])


if __name__ == "__main__":
    main()
