#!/usr/bin/env python3
"""Time to first token with kvtier.transformers: recompute vs prefix hit, per tier and offload format.

For each prompt length, in one run and one process (same model, same daemon):
  recompute             transformers' DynamicCache, the whole prompt prefilled (the baseline)
  kvtier_miss           KvTierCache with no hit: prefill + writing every page to kvtierd (what a first
                        request costs with kvtier)
  hit_gpu               full prefix hit, blocks resident in the GPU tier (fp16)
  hit_host_<fmt>        full prefix hit after the blocks were paged out to the host tier in <fmt>
  hit_ssd_<fmt>         ... and on to the SSD tier
A hit prefills only the prompt's last token(s) (at least one token is always computed: its logits are the
first token); TTFT = load_prefix (Lookup + pin + page-in) + forward of the remainder + argmax.

Runs on the host device (CPU model, host-device kvtierd) at small sizes, and on a GPU machine with the
model on the GPU and kvtierd on its CUDA backend. --data_path pool maps the GPU pool into the process
(CUDA VMM) and moves K/V between the model and the pages on the GPU (KvTierCache(data_path="pool"));
rpc sends them through WriteBlocks/ReadBlocks/Attend. Writes JSON and an SVG plot (TTFT vs prompt
length, one line per case).

  python3 bench/transformers/ttft.py --kvtierd build/release/daemon/kvtierd \
      --out bench/results/transformers_ttft_cpu.json
  python3 bench/transformers/ttft.py --device cuda --model llama3-8b --dtype bf16 --attn sdpa \
      --data_path pool --lengths 4096,8192,16384,32768 --out bench/results/transformers_ttft_h100.json
"""
import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

import kvtier  # noqa: E402
from kvtier.transformers import KvTierCache, precision_policy, register_attention  # noqa: E402

MODELS = {
    # A small Llama for the CPU run (GQA 8:2, head_dim 64).
    "small": dict(vocab_size=4096, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=64),
    # Llama-3-8B's architecture (random weights).
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0),
}


def build_model(name, dtype, device, attn):
    cfg = LlamaConfig(max_position_embeddings=131072, **MODELS[name])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.set_attn_implementation(attn)
    return model


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def first_token(model, ids, cache):
    past = cache.get_seq_length()
    with torch.no_grad():
        out = model(input_ids=ids[:, past:], past_key_values=cache, use_cache=True, logits_to_keep=1)
    return int(out.logits[0, -1].argmax())


class Daemon:
    def __init__(self, binary, ssd_bytes, host_bytes, gpu_bytes):
        self.dir = tempfile.mkdtemp(prefix="kvtier-ttft-")
        self.socket = os.path.join(self.dir, "kvtierd.sock")
        self.log = open(os.path.join(self.dir, "kvtierd.log"), "w")
        args = [binary, f"--socket_path={self.socket}", f"--ssd_dir={os.path.join(self.dir, 'ssd')}",
                f"--limits.ssd_tier_bytes={ssd_bytes}", f"--limits.host_tier_bytes={host_bytes}",
                f"--limits.gpu_pool_bytes={gpu_bytes}", f"--max_message_bytes={256 << 20}"]
        self.proc = subprocess.Popen(args, stderr=self.log)
        for _ in range(3000):
            if os.path.exists(self.socket):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"kvtierd did not start; see {self.log.name}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.dir)


def svg_plot(results, lengths, title, path):
    """A dependency-free log-log line plot: TTFT (ms) vs prompt length, one line per case."""
    cases = sorted({r["case"] for r in results}, key=lambda c: (c != "recompute", c != "kvtier_miss", c))
    w, h, left, right, top, bottom = 760, 460, 70, 200, 40, 50
    ys = [r["ttft_ms"] for r in results]
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    if y1 == y0:
        y1 += 1
    x0, x1 = math.log2(min(lengths)), math.log2(max(lengths))
    x1 = x1 if x1 > x0 else x0 + 1

    def px(n):
        return left + (math.log2(n) - x0) / (x1 - x0) * (w - left - right)

    def py(v):
        return h - bottom - (math.log10(v) - y0) / (y1 - y0) * (h - top - bottom)

    colors = ["#000000", "#7f7f7f", "#1f77b4", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd", "#c5b0d5",
              "#8c564b", "#e377c2"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14">{title}</text>']
    for e in range(y0, y1 + 1):
        y = py(10 ** e)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
    for n in lengths:
        x = px(n)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="#eee"/>'
                   f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{n}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">prompt tokens</text>'
               f'<text x="16" y="{(top + h - bottom) / 2}" transform="rotate(-90 16 {(top + h - bottom) / 2})" '
               f'text-anchor="middle">time to first token (ms)</text>')
    for i, case in enumerate(cases):
        pts = sorted((r["tokens"], r["ttft_ms"]) for r in results if r["case"] == case)
        color = colors[i % len(colors)]
        path_d = " ".join(f"{'M' if j == 0 else 'L'}{px(n):.1f},{py(v):.1f}" for j, (n, v) in enumerate(pts))
        dash = ' stroke-dasharray="6,3"' if case == "kvtier_miss" else ""
        out.append(f'<path d="{path_d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        out += [f'<circle cx="{px(n):.1f}" cy="{py(v):.1f}" r="3" fill="{color}"/>' for n, v in pts]
        ly = top + 14 + 18 * i
        out.append(f'<line x1="{w - right + 12}" y1="{ly - 4}" x2="{w - right + 36}" y2="{ly - 4}" stroke="{color}" '
                   f'stroke-width="2"{dash}/><text x="{w - right + 42}" y="{ly}">{case}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvtierd", default=os.path.join(HERE, "..", "..", "build", "release", "daemon", "kvtierd"))
    ap.add_argument("--model", default="small", choices=sorted(MODELS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"],
                    help="model dtype; pages are bf16 for bf16 models, fp16 otherwise (CPUs without fp16 GEMM: fp32)")
    ap.add_argument("--attn", default="kvtier", choices=["kvtier", "sdpa"],
                    help="attention for the kvtier runs: the Attend fast path or SDPA over dequantized K/V")
    ap.add_argument("--data_path", default="rpc", choices=["rpc", "pool"],
                    help="KvTierCache data path: RPCs, or the GPU pool mapped into this process")
    ap.add_argument("--lengths", default="256,512,1024,2048")
    ap.add_argument("--host_formats", default="fp16,int8,int4")
    ap.add_argument("--ssd_formats", default="int8,int4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode_steps", type=int, default=16,
                    help="decode tokens/s at the longest prompt, kvtier (--attn) vs DynamicCache; 0: skip")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", required=True, help="JSON path; the SVG plot goes next to it")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    load_start = os.getloadavg()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    page_dtype = "bf16" if args.dtype == "bf16" else "fp16"  # KvTierCache's activation dtype for the model
    register_attention()
    model = build_model(args.model, dtype, args.device, "sdpa")
    text = model.config
    page_bytes = text.num_hidden_layers * 2 * text.num_key_value_heads * 16 * text.head_dim * 2
    # Tiers sized for a few copies of the longest prompt's fp16 pages: the daemon demotes and drops the
    # earlier cases' blocks as later ones fill the tiers (each case times its own prompt only).
    longest = max(lengths) * page_bytes // 16
    daemon = Daemon(args.kvtierd, ssd_bytes=max(64 << 20, 4 * longest), host_bytes=max(64 << 20, 4 * longest),
                    gpu_bytes=max(64 << 20, 3 * longest))
    client = kvtier.Client(target="unix:" + daemon.socket, client_name="ttft-bench", max_message_bytes=256 << 20)
    results = []
    vocab = text.vocab_size

    def record(case, tier, fmt, n, times, prefix, token, ref_token):
        results.append({"case": case, "tier": tier, "format": fmt, "tokens": n, "prefix_tokens": prefix,
                        "ttft_ms": statistics.median(times), "ttft_ms_all": times,
                        "same_first_token_as_full_prefill": token == ref_token})
        print(f"{n:>6} {case:<16} {statistics.median(times):9.1f} ms  prefix={prefix}", flush=True)

    def kvtier_hit(ids, policy, evict):
        times, prefix, token = [], 0, None
        for _ in range(args.repeats):
            for tier in evict:
                client.evict(tier)
            sync(args.device)
            t0 = time.perf_counter()
            cache = KvTierCache(model.config, client, policy=policy, dtype=page_dtype, data_path=args.data_path)
            prefix = cache.load_prefix(ids)
            token = first_token(model, ids, cache)
            sync(args.device)
            times.append((time.perf_counter() - t0) * 1e3)
            cache.release()
        return times, prefix, token

    try:
        for n in lengths:
            g = torch.Generator().manual_seed(n)
            base = torch.randint(0, vocab, (1, n), generator=g)
            base[0, 0] = 0  # case 0's prompt (below) is the recompute baseline's
            # Baseline: recompute with transformers' own cache (first call of each length warms up).
            model.set_attn_implementation("sdpa")
            times, ref = [], None
            for r in range(args.repeats + 1):
                ids = base.to(args.device)
                sync(args.device)
                t0 = time.perf_counter()
                ref = first_token(model, ids, DynamicCache(config=model.config))
                sync(args.device)
                if r:
                    times.append((time.perf_counter() - t0) * 1e3)
            record("recompute", "", "", n, times, 0, ref, ref)
            model.set_attn_implementation(args.attn)
            cases = [("gpu", "fp16", [])] + [("host", f, ["gpu"]) for f in args.host_formats.split(",") if f] + \
                    [("ssd", f, ["gpu", "host"]) for f in args.ssd_formats.split(",") if f]
            for i, (tier, fmt, evict) in enumerate(cases):
                policy = precision_policy(page_dtype, fmt)  # pages in the model's dtype, `fmt` in host/SSD
                ids = base.clone()
                ids[0, 0] = i  # a prompt of its own per case (cases may share a layout)
                ids = ids.to(args.device)
                # The first request prefills and publishes the prompt (timed: the miss case, once per length).
                sync(args.device)
                t0 = time.perf_counter()
                cache = KvTierCache(model.config, client, policy=policy, dtype=page_dtype, data_path=args.data_path)
                assert cache.load_prefix(ids) == 0
                miss_token = first_token(model, ids, cache)
                cache.observe_tokens(ids)
                sync(args.device)
                miss_ms = (time.perf_counter() - t0) * 1e3
                layout = cache.layout
                cache.release()
                if i == 0:
                    record("kvtier_miss", "", page_dtype, n, [miss_ms], 0, miss_token, ref)
                times, prefix, token = kvtier_hit(ids, policy, evict)
                # A hit's first token is checked against the full prefill of the same prompt (the miss run).
                record(f"hit_{tier}" + ("" if tier == "gpu" else f"_{fmt}"), tier, fmt, n, times, prefix, token,
                       miss_token)
                # The case's blocks leave every tier (the first block and all chained below it), so that the
                # next case finds the tiers as empty as this one did: no demotion cascades of old prompts.
                client.invalidate_prefix(layout, ids[0, :16].tolist())
        decode = []
        if args.decode_steps:
            n = max(lengths)
            ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(7)).to(args.device)
            for name, attn in (("dynamic_cache", "sdpa"), ("kvtier_" + args.attn, args.attn)):
                model.set_attn_implementation(attn)
                cache = DynamicCache(config=model.config) if attn == "sdpa" and name == "dynamic_cache" else \
                    KvTierCache(model.config, client, policy=precision_policy(page_dtype, "int8"), dtype=page_dtype,
                                data_path=args.data_path)
                tok = first_token(model, ids, cache)
                sync(args.device)
                t0 = time.perf_counter()
                with torch.no_grad():
                    for _ in range(args.decode_steps):
                        out = model(input_ids=torch.tensor([[tok]], device=args.device), past_key_values=cache,
                                    use_cache=True)
                        tok = int(out.logits[0, -1].argmax())
                sync(args.device)
                rate = args.decode_steps / (time.perf_counter() - t0)
                if hasattr(cache, "release"):
                    cache.release()
                decode.append({"cache": name, "context_tokens": n, "steps": args.decode_steps, "tokens_per_s": rate})
                print(f"decode at {n}: {name:<16} {rate:8.2f} tokens/s", flush=True)
    finally:
        client.close()
        daemon.stop()

    base = {r["tokens"]: r["ttft_ms"] for r in results if r["case"] == "recompute"}
    for r in results:
        r["speedup_vs_recompute"] = base[r["tokens"]] / r["ttft_ms"]
    meta = {"device": args.device, "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "torch": torch.__version__, "transformers": transformers.__version__, "model": args.model,
            "model_config": MODELS[args.model], "dtype": args.dtype, "attn": args.attn,
            "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "lengths": lengths,
            "kvtier_data_path": {"rpc": "RPC (WriteBlocks/ReadBlocks/Attend)",
                                 "pool": "mapped pool (GetPoolHandle; scatter/gather on the model's device)"}[
                                     args.data_path], "command": " ".join(sys.argv),
            "cores": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results, "decode": decode}, f, indent=1)
    title = f"TTFT, {args.model} ({args.dtype}, {args.device}{', ' + meta['gpu'] if meta['gpu'] else ''}), " \
            f"attn={args.attn}"
    svg_plot(results, lengths, title, os.path.splitext(args.out)[0] + ".svg")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
