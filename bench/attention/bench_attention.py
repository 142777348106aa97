#!/usr/bin/env python3
"""kvtier paged attention vs torch SDPA, in one run on the GPU machine.

Times, for Hq 32 / Hkv 8 / D 128, block 16, shapes B1x32768, B8x8192, B32x4096, B64x8192:
  - torch SDPA decode on contiguous fp16 KV (enable_gqa) -- the baseline;
  - kvtier paged decode (C ABI, libkvtier_kernels_capi.so) over a shuffled page pool in fp16, bf16,
    fp8_e4m3, fp8_e5m2, int8 (K per-channel, V per-token) and int4 (K per-channel, V per-token groups of 32);
  - prefix-extend: 512 new tokens on an 8192-token prefix, B8: SDPA (flash, no mask), SDPA with the causal
    mask, and kvtier extend over fp16 / fp8 / int8 pages;
  - with --flashinfer (FlashInfer importable, e.g. from shared/tools/peer-flashinfer's bundle): FlashInfer's
    paged decode (fp16 and fp8_e4m3 pages, page 16, HND, CUDA-core and tensor-core variants, the faster
    one kept) and paged prefill (fa3 and fa2 backends) on the same K/V, in the same run.
Pages are quantized from the same K/V as SDPA's (torch code mirroring kernels/format.h), so every row also
reports the relative L2 error against SDPA. Timing: CUDA graph of one call, replayed; CUDA events around
each replay, L2 flushed (256 MiB write) before each, warm-up, median of N.
Usage: KVTIER_CAPI=path/to/libkvtier_kernels_capi.so python3 bench_attention.py [--quick] [--flashinfer]
       [--formats fp16,int4] [--no-extend]
Writes attention_bench.json into $OUT (or the current folder) and prints a summary table last.
"""
import ctypes
import json
import math
import os
import sys
import traceback
import time

import torch
import torch.nn.functional as F

DEV = "cuda"
HQ, HKV, D, BS = 32, 8, 128, 16
HBM_GBS = 3000.0  # ~3 TB/s reference for H100 HBM3 (DESIGN.md measured copy ~2975 GB/s)
QUICK = "--quick" in sys.argv
PROFILE = "--profile" in sys.argv  # one run of each kernel, no timing (for ncu)
WITH_FI = "--flashinfer" in sys.argv
NO_EXTEND = "--no-extend" in sys.argv
ITERS = 20 if QUICK else 60

lib = ctypes.CDLL(os.environ.get("KVTIER_CAPI", os.path.join(os.path.dirname(__file__), "libkvtier_kernels_capi.so")))
U, I32, I64, F32 = ctypes.c_uint64, ctypes.c_int32, ctypes.c_int64, ctypes.c_float
lib.kvtier_last_error.restype = ctypes.c_char_p
lib.kvtier_layout_page_bytes.restype = ctypes.c_uint64
lib.kvtier_layout_param_bytes.restype = ctypes.c_uint32
lib.kvtier_layout_create.argtypes = [I32, I32, I32, I32, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
lib.kvtier_layout_page_bytes.argtypes = [ctypes.c_void_p]
lib.kvtier_layout_param_bytes.argtypes = [ctypes.c_void_p]
lib.kvtier_layout_segment.argtypes = [ctypes.c_void_p, I32, I32, I32] + [ctypes.c_void_p] * 4
lib.kvtier_decode_cuda_workspace.argtypes = [ctypes.c_void_p, I32, I64, I32, U, U, I32, I32, ctypes.c_void_p,
                                             ctypes.c_void_p]
lib.kvtier_decode_cuda.argtypes = [ctypes.c_void_p, I32, U, U, I64, I32, U, U, I32, U, U, I32, I32, U, U, F32, U,
                                   ctypes.c_uint64, U]
lib.kvtier_extend_cuda.argtypes = [ctypes.c_void_p, I32, U, U, I64, I32, U, U, I32, U, U, U, U, I32, I32, U, U, F32,
                                   U]


def check(rc):
    if rc != 0:
        raise RuntimeError(f"kvtier rc={rc}: {lib.kvtier_last_error().decode()}")


FLUSH = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=DEV)


def bench_eager(fn, iters=ITERS):
    """Median microseconds of one call of fn (no graph: launch overhead included), L2 flushed before each."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(iters):
        FLUSH.fill_(1)
        st.record()
        fn()
        en.record()
        torch.cuda.synchronize()
        ts.append(st.elapsed_time(en) * 1000.0)
    ts.sort()
    return ts[len(ts) // 2]


def bench(fn, iters=ITERS):
    """Median microseconds of one graph replay of fn (captured once), L2 flushed before each replay."""
    if PROFILE:
        fn()
        torch.cuda.synchronize()
        return 1.0  # placeholder time: --profile output is not a measurement
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(iters):
        FLUSH.fill_(1)
        st.record()
        g.replay()
        en.record()
        torch.cuda.synchronize()
        ts.append(st.elapsed_time(en) * 1000.0)
    ts.sort()
    return ts[len(ts) // 2]


def rel_err(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


# ---- pools: K/V [B, Hkv, L, D] -> pages [slots][2][Hkv][BS][row] + parameter records (kernels/format.h) ----

def fp16_up(x):
    """Round a non-negative fp32 tensor up to fp16 (scales never clip; format.h FloatToHalfRoundUp)."""
    h = x.clamp(max=65504.0).half()
    bits = h.view(torch.int16)
    bits = torch.where((h.float() < x) & (bits < 0x7bff), bits + 1, bits)
    return bits.view(torch.float16)


def fp16_down(x):
    """Round an fp32 tensor down (toward -inf) to fp16 (int4 offsets; format.h FloatToHalfRoundDown)."""
    h = x.clamp(-65504.0, 65504.0).half()
    bits = h.view(torch.int16).int()
    over = h.float() > x
    neg = bits < 0  # sign bit set
    stepped = torch.where(bits == 0, torch.full_like(bits, -32767), torch.where(neg, bits + 1, bits - 1))
    return torch.where(over, stepped, bits).to(torch.int16).view(torch.float16)


def e4m3_round_up(t):
    """E4M3 value >= t (0 <= t, clamped to 448), kernels/fp4.h E4m3CodeRoundUp."""
    t = t.clamp(max=448.0)
    c = t.to(torch.float8_e4m3fn)
    bits = c.view(torch.uint8)
    bits = torch.where((c.float() < t) & (bits < 0x7e), bits + 1, bits)
    return bits.view(torch.float8_e4m3fn)


E2M1_BOUNDS = None


def quantize_fp4(x, op):
    """fp4_e2m1 (NVFP4 arrangement, format.h): K groups of 16 tokens per channel, V groups of 16 channels per
    token; E4M3 scale per group (rounded up), fp32 segment scale G = absmax / 2688 after the group bytes."""
    global E2M1_BOUNDS
    S = x.shape[0]
    G = x.abs().amax(dim=(2, 3)) / 2688.0  # [S, H]
    if op == 0:
        m = x.view(S, HKV, BS // 16, 16, D).abs().amax(dim=3)  # [S, H, BS/16, D]
        Gx = G.view(S, HKV, 1, 1)
    else:
        m = x.view(S, HKV, BS, D // 16, 16).abs().amax(dim=4)  # [S, H, BS, D/16]
        Gx = G.view(S, HKV, 1, 1)
    g6 = Gx * 6.0
    t = torch.where(g6 > 0, m / torch.where(g6 > 0, g6, torch.ones_like(g6)), torch.zeros_like(m))
    sc = e4m3_round_up(t)  # [.., groups]
    scale = sc.float() * Gx
    if op == 0:
        full = scale.view(S, HKV, BS // 16, 1, D).expand(S, HKV, BS // 16, 16, D).reshape(S, HKV, BS, D)
    else:
        full = scale.view(S, HKV, BS, D // 16, 1).expand(S, HKV, BS, D // 16, 16).reshape(S, HKV, BS, D)
    y = torch.where(full > 0, x / torch.where(full > 0, full, torch.ones_like(full)), torch.zeros_like(x))
    if E2M1_BOUNDS is None:  # ties to the even code: 0.25->0, 0.75->1.0, 1.25->1.0, 1.75->2, 2.5->2, 3.5->4, 5->4
        below = lambda b: torch.nextafter(torch.tensor(b), torch.tensor(-1.0)).item()
        E2M1_BOUNDS = torch.tensor([0.25, below(0.75), 1.25, below(1.75), 2.5, below(3.5), 5.0], device=DEV)
    mag = torch.bucketize(y.abs(), E2M1_BOUNDS, right=False).to(torch.uint8)
    code = mag | (torch.signbit(y).to(torch.uint8) << 3)
    code = code.reshape(S, HKV, BS, D)
    codes = (code[..., 0::2] | (code[..., 1::2] << 4)).contiguous()
    prm = torch.cat([sc.reshape(S, HKV, -1).view(torch.uint8), G.reshape(S, HKV, 1).contiguous().view(torch.uint8)
                     .reshape(S, HKV, 4)], dim=2)
    return codes, prm.contiguous()


def quantize(x, fmt, op):
    """x: [S, Hkv, BS, D] fp32 segments -> (codes uint8 [S, Hkv, BS, row], params uint8 [S, Hkv, n] or None)."""
    S = x.shape[0]
    if fmt == "fp4_e2m1":
        return quantize_fp4(x, op)
    if fmt in ("fp16", "bf16"):
        dt = torch.float16 if fmt == "fp16" else torch.bfloat16
        return x.to(dt).contiguous().view(torch.uint8).view(S, HKV, BS, -1), None
    if fmt.startswith("fp8"):
        dt, mx = (torch.float8_e4m3fn, 448.0) if fmt == "fp8_e4m3" else (torch.float8_e5m2, 57344.0)
        scale = x.abs().amax(dim=(2, 3), keepdim=True) / mx
        inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
        codes = (x * inv).clamp(-mx, mx).to(dt).view(torch.uint8)
        return codes, scale.reshape(S, HKV, 1).contiguous().view(torch.uint8).reshape(S, HKV, 4)
    per_channel = op == 0
    if fmt == "int8":
        amax = x.abs().amax(dim=2, keepdim=True) if per_channel else x.abs().amax(dim=3, keepdim=True)
        sc = fp16_up(amax / 127.0)
        inv = torch.where(sc.float() > 0, 1.0 / sc.float(), torch.zeros_like(amax))
        codes = torch.round(x * inv).clamp(-127, 127).to(torch.int8).view(torch.uint8)
        return codes, sc.reshape(S, HKV, -1).contiguous().view(torch.uint8).reshape(S, HKV, -1)
    # int4: K per channel over tokens; V per token in groups of 32 channels.
    if per_channel:
        lo, hi = x.amin(dim=2, keepdim=True), x.amax(dim=2, keepdim=True)
    else:
        g = x.view(S, HKV, BS, D // 32, 32)
        lo, hi = g.amin(dim=4, keepdim=True), g.amax(dim=4, keepdim=True)
    off = fp16_down(lo)
    sc = fp16_up((hi - off.float()) / 15.0)
    inv = torch.where(sc.float() > 0, 1.0 / sc.float(), torch.zeros_like(hi))
    src = x if per_channel else x.view(S, HKV, BS, D // 32, 32)
    c = torch.round((src - off.float()) * inv).clamp(0, 15).to(torch.uint8).reshape(S, HKV, BS, D)
    codes = (c[..., 0::2] | (c[..., 1::2] << 4)).contiguous()
    prm = torch.stack([sc.reshape(S, HKV, -1), off.reshape(S, HKV, -1)], dim=-1)  # (scale, offset) pairs
    return codes, prm.contiguous().view(torch.uint8).reshape(S, HKV, -1)


class Pool:
    def __init__(self, k, v, fmt):
        B, _, L, _ = k.shape
        nb = L // BS
        self.layout = ctypes.c_void_p()
        check(lib.kvtier_layout_create(1, HKV, D, BS, fmt.encode(), fmt.encode(), ctypes.byref(self.layout)))
        self.page_bytes = lib.kvtier_layout_page_bytes(self.layout)
        self.param_bytes = lib.kvtier_layout_param_bytes(self.layout)
        S = B * nb
        perm = torch.randperm(S, device=DEV)  # block i of the batch lives in slot perm[i]
        self.data = torch.empty(S, self.page_bytes, dtype=torch.uint8, device=DEV)
        self.params = torch.zeros(S, max(self.param_bytes, 16), dtype=torch.uint8, device=DEV)
        used_param_bytes = 0
        for op, x in enumerate((k, v)):
            seg = x.view(B, HKV, nb, BS, D).permute(0, 2, 1, 3, 4).reshape(S, HKV, BS, D).float()
            codes, prm = quantize(seg, fmt, op)
            codes = codes.reshape(S, HKV, -1)
            for h in range(HKV):
                off, nbytes, poff, pbytes = ctypes.c_uint64(), ctypes.c_uint32(), ctypes.c_uint32(), ctypes.c_uint32()
                check(lib.kvtier_layout_segment(self.layout, 0, op, h, ctypes.byref(off), ctypes.byref(nbytes),
                                                ctypes.byref(poff), ctypes.byref(pbytes)))
                assert nbytes.value == codes.shape[2]
                self.data[perm, off.value:off.value + nbytes.value] = codes[:, h]
                if pbytes.value:
                    assert prm is not None and prm.shape[2] == pbytes.value, (fmt, prm.shape, pbytes.value)
                    self.params[perm, poff.value:poff.value + pbytes.value] = prm[:, h]
                    used_param_bytes += pbytes.value
            del seg, codes, prm
        self.num_slots = S
        self.table_host = perm.view(B, nb).int().cpu().contiguous()
        self.table_dev = self.table_host.to(DEV)
        self.lens_host = torch.full((B,), L, dtype=torch.int32)
        self.lens_dev = self.lens_host.to(DEV)
        self.B, self.nb = B, nb
        # Bytes a decode must read: codes of every token plus the parameter records' used bytes.
        self.kv_bytes = S * (self.page_bytes + used_param_bytes)

    def decode(self, q, out):
        ws_bytes, splits = ctypes.c_uint64(), ctypes.c_int32()
        check(lib.kvtier_decode_cuda_workspace(self.layout, 0, self.num_slots, self.B, self.lens_host.data_ptr(),
                                               self.table_host.data_ptr(), self.nb, HQ, ctypes.byref(ws_bytes),
                                               ctypes.byref(splits)))
        ws = torch.empty(max(ws_bytes.value, 16), dtype=torch.uint8, device=DEV)
        dtype = 1 if q.dtype == torch.bfloat16 else 0

        def run():
            check(lib.kvtier_decode_cuda(self.layout, 0, self.data.data_ptr(), self.params.data_ptr(), self.num_slots,
                                         self.B, self.lens_host.data_ptr(), self.table_host.data_ptr(), self.nb,
                                         self.lens_dev.data_ptr(), self.table_dev.data_ptr(), HQ, dtype, q.data_ptr(),
                                         out.data_ptr(), 0.0, ws.data_ptr(), ws_bytes.value,
                                         torch.cuda.current_stream().cuda_stream))
        return run, splits.value

    def extend(self, q, out, n_new):
        indptr_host = (torch.arange(self.B + 1, dtype=torch.int32) * n_new).contiguous()
        indptr_dev = indptr_host.to(DEV)
        dtype = 1 if q.dtype == torch.bfloat16 else 0

        def run():
            check(lib.kvtier_extend_cuda(self.layout, 0, self.data.data_ptr(), self.params.data_ptr(), self.num_slots,
                                         self.B, self.lens_host.data_ptr(), self.table_host.data_ptr(), self.nb,
                                         indptr_host.data_ptr(), self.lens_dev.data_ptr(), self.table_dev.data_ptr(),
                                         indptr_dev.data_ptr(), HQ, dtype, q.data_ptr(), out.data_ptr(), 0.0,
                                         torch.cuda.current_stream().cuda_stream))
        run.keep = (indptr_host, indptr_dev)
        return run

    def __del__(self):
        try:
            lib.kvtier_layout_destroy(self.layout)
        except Exception:
            pass


# ---- FlashInfer (peer): paged KV [pages][2][Hkv][BS][D] (HND: one head's block contiguous, like kvtier) ----
fi = None
if WITH_FI:
    try:
        import flashinfer as fi
        FI_WS = torch.zeros(256 * 1024 * 1024, dtype=torch.uint8, device=DEV)
    except Exception as ex:  # the run goes on without the peer, and says so
        print("flashinfer unavailable:", ex, flush=True)
        fi = None


def fi_pool(k, v, dtype):
    B, _, L, _ = k.shape
    npg = L // BS
    kk = k.view(B, HKV, npg, BS, D).permute(0, 2, 1, 3, 4).reshape(B * npg, HKV, BS, D)
    vv = v.view(B, HKV, npg, BS, D).permute(0, 2, 1, 3, 4).reshape(B * npg, HKV, BS, D)
    perm = torch.randperm(B * npg, device=DEV)
    pool = torch.empty(B * npg, 2, HKV, BS, D, dtype=dtype, device=DEV)
    pool[perm, 0] = kk.to(dtype)
    pool[perm, 1] = vv.to(dtype)
    indices = perm.int()
    indptr = torch.arange(0, B + 1, device=DEV, dtype=torch.int32) * npg
    last = torch.full((B,), BS, device=DEV, dtype=torch.int32)
    return pool, indptr, indices, last


def fi_time(run):
    """Graph replay when the wrapper can be captured (it is built with use_cuda_graph), else eager."""
    try:
        return bench(run), "graph"
    except Exception as ex:  # noqa: BLE001 -- capture refused: time it eagerly and record that
        print("  (graph capture failed, timing eagerly:", str(ex)[:120], ")", flush=True)
        torch.cuda.synchronize()
        return bench_eager(run), "eager"


def fi_decode(q, k, v, ref, sdpa, row):
    B = q.shape[0]
    qq = q.view(B, HQ, D).contiguous()
    for name, dt in [("fp16", torch.float16), ("fp8_e4m3", torch.float8_e4m3fn)]:
        pool, indptr, indices, last = fi_pool(k, v, dt)
        best = None
        for tc in (False, True):
            try:
                w = fi.BatchDecodeWithPagedKVCacheWrapper(FI_WS, "HND", use_cuda_graph=True, use_tensor_cores=tc,
                                                          paged_kv_indptr_buffer=indptr.clone(),
                                                          paged_kv_indices_buffer=indices.clone(),
                                                          paged_kv_last_page_len_buffer=last.clone())
                w.plan(indptr, indices, last, HQ, HKV, D, BS, q_data_type=torch.float16, kv_data_type=dt)
                out = w.run(qq, pool)
                torch.cuda.synchronize()
                err = rel_err(out, ref.view(B, HQ, D))
                us, mode = fi_time(lambda: w.run(qq, pool))
                print(f"B{B} L{k.shape[2]} FlashInfer {name:9s} tc={int(tc)} {us:8.1f} us  x{sdpa / us:5.2f} vs SDPA"
                      f"  err {err:.2e} ({mode})", flush=True)
                if best is None or us < best["us"]:
                    best = {"us": round(us, 1), "speedup_vs_sdpa": round(sdpa / us, 2), "tensor_cores": tc,
                            "timing": mode, "rel_err_vs_sdpa": float(f"{err:.3g}")}
            except Exception as ex:  # record and go on: a missing peer row must not lose the run
                print(f"B{B} FlashInfer {name} tc={tc}: FAILED {type(ex).__name__}: {str(ex)[:300]}", flush=True)
        row.setdefault("flashinfer", {})[name] = best or {"error": "all variants failed"}
        del pool
        torch.cuda.empty_cache()


def fi_extend(q, k, v, ref, ext, n_new):
    B = q.shape[0]
    qq = q.permute(0, 2, 1, 3).reshape(B * n_new, HQ, D).contiguous()
    pool, indptr, indices, last = fi_pool(k, v, torch.float16)
    qo_indptr = torch.arange(0, B + 1, device=DEV, dtype=torch.int32) * n_new
    for backend in ("fa3", "fa2"):
        try:
            w = fi.BatchPrefillWithPagedKVCacheWrapper(FI_WS, "HND", use_cuda_graph=True, backend=backend,
                                                       qo_indptr_buf=qo_indptr.clone(),
                                                       paged_kv_indptr_buf=indptr.clone(),
                                                       paged_kv_indices_buf=indices.clone(),
                                                       paged_kv_last_page_len_buf=last.clone())
            w.plan(qo_indptr, indptr, indices, last, HQ, HKV, D, BS, causal=True, q_data_type=torch.float16,
                   kv_data_type=torch.float16)
            out = w.run(qq, pool)
            torch.cuda.synchronize()
            err = rel_err(out.view(B, n_new, HQ, D).permute(0, 2, 1, 3), ref)
            us, mode = fi_time(lambda: w.run(qq, pool))
            ext[f"flashinfer_fp16_{backend}"] = {"us": round(us, 1),
                                                  "vs_sdpa_flash": round(us / ext["sdpa_flash_nomask_us"], 2),
                                                  "timing": mode, "rel_err_vs_sdpa": float(f"{err:.3g}")}
            print(f"extend FlashInfer fp16 {backend} {us:8.1f} us  err {err:.2e} ({mode})", flush=True)
        except Exception as ex:
            print(f"extend FlashInfer {backend}: FAILED {type(ex).__name__}: {str(ex)[-600:]}", flush=True)
            ext[f"flashinfer_fp16_{backend}"] = {"error": f"{type(ex).__name__}: {ex}"[:300]}
    del pool
    torch.cuda.empty_cache()


FORMATS = ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4"] + (["fp4_e2m1"] if "--fp4" in sys.argv else [])
SHAPES = [(1, 32768), (8, 8192), (32, 4096), (64, 8192)]
EXTEND_FORMATS = ["fp16", "fp8_e4m3", "int8"] + (["fp4_e2m1"] if "--fp4" in sys.argv else [])
for i, a in enumerate(sys.argv):
    if a == "--shapes":  # e.g. 32x4096,64x8192
        SHAPES = [tuple(int(x) for x in t.split("x")) for t in sys.argv[i + 1].split(",")]
    if a == "--formats":
        FORMATS = sys.argv[i + 1].split(",")
        EXTEND_FORMATS = [f for f in EXTEND_FORMATS if f in FORMATS]
if PROFILE:
    FORMATS, SHAPES, EXTEND_FORMATS = ["fp16", "fp8_e4m3", "int4"], [(32, 4096)], ["fp16"]
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
       "flashinfer": getattr(fi, "__version__", None), "Hq": HQ, "Hkv": HKV, "D": D,
       "block": BS, "hbm_ref_GBs": HBM_GBS, "iters": ITERS, "timing": "CUDA graph replay, events, L2 flushed, median",
       "decode": [], "extend": {}}
_src = torch.empty(1 << 31, dtype=torch.uint8, device=DEV).fill_(3)
_dst = torch.empty_like(_src)
res["copy_GBs_measured"] = 0 if PROFILE else round(2 * _src.numel() / bench(lambda: _dst.copy_(_src), 10) / 1e3)
del _src, _dst
if "H200" in res["device"]:
    HBM_GBS = 4800.0  # H200 HBM3e spec
    res["hbm_ref_GBs"] = HBM_GBS
print(res["device"], "torch", torch.__version__, "device copy (read+write)", res["copy_GBs_measured"], "GB/s",
      flush=True)
torch.manual_seed(0)

def decode_inputs(B, L):
    """The shape's q, K, V (seeded: the FlashInfer phase regenerates the same tensors)."""
    torch.manual_seed(1000 * B + L)
    q = torch.randn(B, HQ, 1, D, device=DEV, dtype=torch.float16)
    k = torch.randn(B, HKV, L, D, device=DEV, dtype=torch.float16)
    v = torch.randn(B, HKV, L, D, device=DEV, dtype=torch.float16)
    return q, k, v


def wait_for_fi_warm():
    """bench_attention.sh JIT-compiles FlashInfer's modules in the background (fi_warm.py) while kvtier runs;
    wait for their markers so that no timed call compiles."""
    marks = os.environ.get("FI_WARM_MARKERS", "")
    if not marks:
        return
    t0 = time.time()
    while not all(os.path.exists(m) for m in marks.split(",")) and time.time() - t0 < 900:
        time.sleep(2)
    print(f"FlashInfer JIT warm-up: waited {time.time() - t0:.0f} s", flush=True)


for B, L in SHAPES:
    q, k, v = decode_inputs(B, L)
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    fp16_bytes = 2 * B * HKV * L * D * 2
    row = {"B": B, "L": L, "sdpa_us": round(sdpa, 1), "sdpa_GBs": round(fp16_bytes / sdpa / 1e3),
           "sdpa_hbm_pct": round(100 * fp16_bytes / sdpa / 1e3 / HBM_GBS, 1)}
    for fmt in FORMATS:
        try:
            t0 = time.time()
            pool = Pool(k, v, fmt)
            qq = q.view(B, HQ, D).to(torch.bfloat16 if fmt == "bf16" else torch.float16).contiguous()
            out = torch.full_like(qq, float("nan"))
            run, splits = pool.decode(qq, out)
            run()
            torch.cuda.synchronize()
            err = rel_err(out, ref.view(B, HQ, D))
            us = bench(run)
            row[fmt] = {"us": round(us, 1), "speedup_vs_sdpa": round(sdpa / us, 2),
                        "GBs": round(pool.kv_bytes / us / 1e3), "hbm_pct": round(100 * pool.kv_bytes / us / 1e3 / HBM_GBS, 1),
                        "rel_err_vs_sdpa": float(f"{err:.3g}"), "splits": splits}
            print(f"B{B} L{L} {fmt:9s} {us:8.1f} us  x{sdpa / us:5.2f} vs SDPA {sdpa:7.1f} us  "
                  f"{pool.kv_bytes / us / 1e3:6.0f} GB/s  err {err:.2e}  splits {splits}  (setup {time.time() - t0:.1f}s)",
                  flush=True)
            del pool, out
        except Exception as ex:  # record and go on: one failed format must not lose the run
            traceback.print_exc()
            row[fmt] = {"error": f"{type(ex).__name__}: {ex}"[:300]}
        torch.cuda.empty_cache()
    res["decode"].append(row)
    del q, k, v, ref
    torch.cuda.empty_cache()

# ---- prefix-extend: 512 new tokens on an 8192-token cached prefix, B8, causal ----
if NO_EXTEND:
    EXTEND_FORMATS = []
B, P, N = 8, 8192, 512
L = P + N
torch.manual_seed(77)
q = torch.randn(B, HQ, N, D, device=DEV, dtype=torch.float16)
k = torch.randn(B, HKV, L, D, device=DEV, dtype=torch.float16)
v = torch.randn(B, HKV, L, D, device=DEV, dtype=torch.float16)
ext = {"B": B, "prefix": P, "new": N}
ext["sdpa_flash_nomask_us"] = round(bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)), 1)
mask = torch.ones(N, L, dtype=torch.bool, device=DEV).tril(diagonal=P)
ext["sdpa_causal_mask_us"] = round(
    bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)), 1)
ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # [B, HQ, N, D]
qq = q.permute(0, 2, 1, 3).reshape(B * N, HQ, D).contiguous()
for fmt in EXTEND_FORMATS:
    try:
        pool = Pool(k, v, fmt)
        out = torch.full_like(qq, float("nan"))
        run = pool.extend(qq, out, N)
        run()
        torch.cuda.synchronize()
        err = rel_err(out.view(B, N, HQ, D).permute(0, 2, 1, 3), ref)
        us = bench(run)
        flops = 4.0 * B * HQ * N * (P + (N + 1) / 2) * D
        ext[fmt] = {"us": round(us, 1), "vs_sdpa_flash": round(us / ext["sdpa_flash_nomask_us"], 2),
                    "TFLOPs": round(flops / us / 1e6, 1), "rel_err_vs_sdpa": float(f"{err:.3g}")}
        print(f"extend {fmt:9s} {us:8.1f} us  ({us / ext['sdpa_flash_nomask_us']:.2f}x SDPA flash "
              f"{ext['sdpa_flash_nomask_us']} us)  err {err:.2e}", flush=True)
        del pool, out
    except Exception as ex:
        traceback.print_exc()
        ext[fmt] = {"error": f"{type(ex).__name__}: {ex}"[:300]}
    torch.cuda.empty_cache()
res["extend"] = ext
outdir = os.environ.get("OUT", ".")
if not PROFILE:  # written now and again after the FlashInfer phase (a cut-off run keeps kvtier and SDPA)
    with open(os.path.join(outdir, "attention_bench.json"), "w") as f:
        json.dump(res, f, indent=1)

# ---- FlashInfer, same process and device, same inputs (extend first: its tensors are still here) ----
if fi is not None:
    wait_for_fi_warm()
    if not NO_EXTEND and "--no-fi-extend" not in sys.argv:
        fi_extend(q, k, v, ref, ext, N)
    del q, k, v, ref
    torch.cuda.empty_cache()
    for row in res["decode"]:
        B, L = row["B"], row["L"]
        q, k, v = decode_inputs(B, L)
        ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        fi_decode(q, k, v, ref, row["sdpa_us"], row)
        del q, k, v, ref
        torch.cuda.empty_cache()

if PROFILE:
    sys.exit(0)
outdir = os.environ.get("OUT", ".")
with open(os.path.join(outdir, "attention_bench.json"), "w") as f:
    json.dump(res, f, indent=1)
print("\n== decode: speedup vs SDPA fp16 (us) ==")
print("shape        SDPA_us " + " ".join(f"{x:>16s}" for x in FORMATS))
for r in res["decode"]:
    cells = " ".join(f"{r[x]['speedup_vs_sdpa']:5.2f}x {r[x]['us']:7.1f}us" if "us" in r[x] else f"{'ERR':>16s}"
                     for x in FORMATS)
    print(f"B{r['B']:<2d}x{r['L']:<6d} {r['sdpa_us']:8.1f} {cells}")
if fi is not None:
    print("FlashInfer (us, speedup vs SDPA): " + "; ".join(
        f"B{r['B']}x{r['L']} " + " ".join(f"{n} {x.get('us')} ({x.get('speedup_vs_sdpa')}x)"
                                          for n, x in r.get("flashinfer", {}).items()) for r in res["decode"]))
print("% HBM:", {f: [r[f].get("hbm_pct") for r in res["decode"] if f in r] for f in FORMATS})
print("extend:", json.dumps(ext))
