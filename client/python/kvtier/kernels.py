"""kvtier's paged attention kernels on a mapped pool, in the engine's process (libkvtier_kernels_capi).

    attn = PoolAttention(pool)                      # pool: a kvtier.pool.MappedPool of fp16/bf16 pages
    out = attn.attend(layer, q, slots, seq_len)     # q [n, Hq, D] -> out [n, Hq, D]

Decode for one query row, prefix-extend (causal within the new rows) for several, over the sequence's
pages in the pool: no copy of the K/V. A CUDA pool runs the CUDA kernels on the caller's current torch
stream; a host-device pool runs the CPU kernels. The library is found through $KVTIER_KERNELS_CAPI, or
in the build tree (build/release/kernels/libkvtier_kernels_capi.so).
"""
import ctypes
import os

import numpy as np

_FORMAT_NAMES = {0: "fp16", 1: "bf16"}  # kernels/format.h; the pool data path holds pass-through pages
_U, _I32, _I64, _F32, _P = ctypes.c_uint64, ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
_lib = None


def library():
    """The loaded C API (ctypes.CDLL with argument types)."""
    global _lib
    if _lib is not None:
        return _lib
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("KVTIER_KERNELS_CAPI", "")] + [
        os.path.normpath(os.path.join(here, "..", "..", "..", "build", preset, "kernels", "libkvtier_kernels_capi.so"))
        for preset in ("release", "gpu", "debug")]
    path = next((c for c in candidates if c and os.path.exists(c)), None)
    if path is None:
        raise FileNotFoundError("libkvtier_kernels_capi.so not found: build the kvtier_kernels_capi target or set "
                                "KVTIER_KERNELS_CAPI")
    lib = ctypes.CDLL(path)
    lib.kvtier_last_error.restype = ctypes.c_char_p
    lib.kvtier_layout_create.argtypes = [_I32, _I32, _I32, _I32, ctypes.c_char_p, ctypes.c_char_p, _P]
    lib.kvtier_layout_destroy.argtypes = [_P]
    lib.kvtier_layout_page_bytes.argtypes = [_P]
    lib.kvtier_layout_page_bytes.restype = _U
    lib.kvtier_decode_cpu.argtypes = [_P, _I32, _U, _U, _I64, _I32, _U, _U, _I32, _I32, _I32, _U, _U, _F32, _I32]
    lib.kvtier_extend_cpu.argtypes = [_P, _I32, _U, _U, _I64, _I32, _U, _U, _I32, _U, _I32, _I32, _U, _U, _F32, _I32]
    lib.kvtier_decode_cuda_workspace.argtypes = [_P, _I32, _I64, _I32, _U, _U, _I32, _I32, _P, _P]
    lib.kvtier_decode_cuda.argtypes = [_P, _I32, _U, _U, _I64, _I32, _U, _U, _I32, _U, _U, _I32, _I32, _U, _U, _F32,
                                       _U, _U, _U]
    lib.kvtier_extend_cuda.argtypes = [_P, _I32, _U, _U, _I64, _I32, _U, _U, _I32, _U, _U, _U, _U, _I32, _I32, _U, _U,
                                       _F32, _U]
    _lib = lib
    return lib


def _check(rc):
    if rc != 0:
        raise RuntimeError(f"kvtier kernels: code {rc}: {library().kvtier_last_error().decode()}")


class PoolAttention:
    """Paged attention over one layout's mapped pool (fp16 or bf16 pages, every segment the same format)."""

    def __init__(self, pool, threads=0):
        import torch
        formats = {c.format for c in pool.handle.resident_codecs}
        if len(formats) != 1 or next(iter(formats)) not in _FORMAT_NAMES:
            raise ValueError("PoolAttention serves pools of fp16 or bf16 pages")
        fmt = _FORMAT_NAMES[next(iter(formats))]
        spec = pool.handle.layout
        self.pool = pool
        self.dtype_code = 0 if fmt == "fp16" else 1
        self.torch_dtype = torch.float16 if fmt == "fp16" else torch.bfloat16
        self.threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self._layout = ctypes.c_void_p()
        lib = library()
        _check(lib.kvtier_layout_create(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.block_size,
                                        fmt.encode(), fmt.encode(), ctypes.byref(self._layout)))
        if lib.kvtier_layout_page_bytes(self._layout) != pool.page_bytes:
            raise ValueError("the kernels' page geometry differs from the pool's")
        self.num_q_heads = None
        self._workspace = None

    def _pool_pointers(self):
        tensor = self.pool.pool_tensor()
        base = tensor.data_ptr()
        return base, base + self.pool.handle.params_offset

    def attend(self, layer, q, slots, seq_len, sm_scale, slots_dev=None):
        """q: [n, Hq, D] (the sequence's last n positions, in the pages' dtype, on the pool's device);
        slots: the slots of the sequence's first ceil(seq_len / block_size) blocks (a list: the host copy
        the kernels validate against the pool); slots_dev: the same on the device, if the caller has them.
        Returns out [n, Hq, D]."""
        import torch
        n, num_q_heads = q.shape[0], q.shape[1]
        q = q.contiguous()
        out = torch.empty_like(q)
        slots_host = np.asarray(slots, dtype=np.int32)
        seq_lens_host = np.asarray([seq_len], dtype=np.int32)
        indptr_host = np.asarray([0, n], dtype=np.int32)
        stride = len(slots_host)
        data, params = self._pool_pointers()
        lib = library()
        ns = self.pool.num_slots
        if not self.pool.on_gpu:
            if n == 1:
                _check(lib.kvtier_decode_cpu(self._layout, layer, data, params, ns, 1, seq_lens_host.ctypes.data,
                                             slots_host.ctypes.data, stride, num_q_heads, self.dtype_code,
                                             q.data_ptr(), out.data_ptr(), sm_scale, self.threads))
            else:
                _check(lib.kvtier_extend_cpu(self._layout, layer, data, params, ns, 1, seq_lens_host.ctypes.data,
                                             slots_host.ctypes.data, stride, indptr_host.ctypes.data, num_q_heads,
                                             self.dtype_code, q.data_ptr(), out.data_ptr(), sm_scale, self.threads))
            return out
        dev = q.device
        # Device mirrors made by kernels, not copied from pageable host memory: such a copy would wait for
        # the model's queued work on every layer and keep the CPU from running ahead.
        slots_dev = (slots_dev.to(dtype=torch.int32) if slots_dev is not None
                     else torch.from_numpy(slots_host).to(dev))
        seq_lens_dev = torch.full((1,), seq_len, dtype=torch.int32, device=dev)
        stream = torch.cuda.current_stream(dev).cuda_stream
        if n == 1:
            need, splits = ctypes.c_uint64(0), ctypes.c_int32(0)
            _check(lib.kvtier_decode_cuda_workspace(self._layout, layer, ns, 1, seq_lens_host.ctypes.data,
                                                    slots_host.ctypes.data, stride, num_q_heads, ctypes.byref(need),
                                                    ctypes.byref(splits)))
            if need.value and (self._workspace is None or self._workspace.numel() < need.value):
                self._workspace = torch.empty(need.value, dtype=torch.uint8, device=dev)
            ws = self._workspace.data_ptr() if need.value else 0
            _check(lib.kvtier_decode_cuda(self._layout, layer, data, params, ns, 1, seq_lens_host.ctypes.data,
                                          slots_host.ctypes.data, stride, seq_lens_dev.data_ptr(), slots_dev.data_ptr(),
                                          num_q_heads, self.dtype_code, q.data_ptr(), out.data_ptr(), sm_scale, ws,
                                          need.value, stream))
        else:
            indptr_dev = torch.arange(0, 2 * n, n, dtype=torch.int32, device=dev)  # [0, n]
            _check(lib.kvtier_extend_cuda(self._layout, layer, data, params, ns, 1, seq_lens_host.ctypes.data,
                                          slots_host.ctypes.data, stride, indptr_host.ctypes.data,
                                          seq_lens_dev.data_ptr(), slots_dev.data_ptr(), indptr_dev.data_ptr(),
                                          num_q_heads, self.dtype_code, q.data_ptr(), out.data_ptr(), sm_scale,
                                          stream))
        return out

    def __del__(self):
        if getattr(self, "_layout", None) and _lib is not None:
            _lib.kvtier_layout_destroy(self._layout)
