"""The GPU-tier pool of a layout, mapped into this process (the Python side of client/pool_mapping.h).

    pool = client.map_pool(layout)          # GetPoolHandle + the descriptor socket + mmap
    hit = client.lookup(layout, prompt, pin=True)
    page = pool.page_values(hit.blocks[0].slot)   # float16 [layers][K, V][kv_heads][tokens][head_dim]
    pool.close()

The engine reads and writes resident pages in place: slot s's page is at s * page_bytes, and blocks it
allocated are written there instead of through write_blocks. Only a slot the session holds (allocated,
or pinned by a lookup) may be touched; the daemon moves unpinned blocks between tiers at any time.

Host-device pools (kind POOL_KIND_HOST_MEMFD: one memfd, mapped MAP_SHARED) are mapped with mmap and seen
as numpy arrays (and torch CPU tensors). CUDA VMM pools (POOL_KIND_CUDA_VMM: one POSIX descriptor per
committed chunk) are imported through the CUDA driver (ctypes; the same sequence as the C++
GpuPoolMapping::Import: reserve, import, map, set access) and seen as torch CUDA tensors. The daemon
commits a CUDA pool's memory in chunks as slots are first used, so a mapping covers the chunks committed
when it was taken; refresh() maps the ones committed since (page_tensor and pool_tensor do it on demand).
Legacy CUDA IPC pools (POOL_KIND_CUDA_IPC) are left to the C++ client (NotImplementedError).
"""
import ctypes
import mmap
import os
import socket
import struct

import numpy as np

from kvtier.v1 import kvtier_pb2 as pb

_FD_MAGIC = 0x4446564B  # "KVFD", client/fd_transfer.h
_FD_HEADER = struct.Struct("<IIII")  # magic, status (0 ok), total descriptors, descriptors in this message
_MAX_FDS_PER_MESSAGE = 250
_TICKET_BYTES = 16
_FORMAT_FP16, _FORMAT_BF16 = 0, 1  # kernels/format.h


def fetch_fds(path, ticket, timeout=5.0):
    """The descriptors of a one-time `ticket` from the daemon's descriptor socket at `path` (the caller
    owns them). PermissionError for an unknown, used or expired ticket."""
    if len(ticket) != _TICKET_BYTES:
        raise ValueError("a descriptor ticket has 16 bytes")
    fds = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(ticket)
            total = None
            while total is None or len(fds) < total:
                msg, got, _, _ = socket.recv_fds(s, _FD_HEADER.size, _MAX_FDS_PER_MESSAGE)
                fds.extend(got)  # owned before anything below can fail
                if len(msg) != _FD_HEADER.size:
                    raise ConnectionError("malformed answer from the descriptor socket")
                magic, status, total, _ = _FD_HEADER.unpack(msg)
                if magic != _FD_MAGIC:
                    raise ConnectionError("malformed answer from the descriptor socket")
                if status != 0:
                    raise PermissionError("unknown, used or expired descriptor ticket")
            if len(fds) != total:
                raise ConnectionError("the descriptor socket sent more descriptors than announced")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


class _CudaDriver:
    """The few CUDA driver entry points a VMM import needs (libcuda through ctypes)."""

    HANDLE_TYPE_POSIX_FD = 1   # CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
    LOCATION_TYPE_DEVICE = 1   # CU_MEM_LOCATION_TYPE_DEVICE
    ACCESS_READ_WRITE = 3      # CU_MEM_ACCESS_FLAGS_PROT_READWRITE

    class AccessDesc(ctypes.Structure):  # CUmemAccessDesc
        _fields_ = [("location_type", ctypes.c_int), ("location_id", ctypes.c_int), ("flags", ctypes.c_int)]

    _lib = None

    @classmethod
    def lib(cls):
        if cls._lib is None:
            lib = ctypes.CDLL("libcuda.so.1")
            u64, size = ctypes.c_uint64, ctypes.c_size_t
            sigs = {
                "cuMemAddressReserve": [ctypes.POINTER(u64), size, size, u64, ctypes.c_ulonglong],
                "cuMemAddressFree": [u64, size],
                "cuMemImportFromShareableHandle": [ctypes.POINTER(u64), ctypes.c_void_p, ctypes.c_int],
                "cuMemMap": [u64, size, size, u64, ctypes.c_ulonglong],
                "cuMemUnmap": [u64, size],
                "cuMemRelease": [u64],
                "cuMemSetAccess": [u64, size, ctypes.POINTER(cls.AccessDesc), size],
            }
            for name, args in sigs.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, ctypes.c_int
            cls._lib = lib
        return cls._lib

    @classmethod
    def call(cls, name, *args):
        r = getattr(cls.lib(), name)(*args)
        if r != 0:
            raise RuntimeError(f"{name} failed with CUresult {r}")


class _CudaVmmMapping:
    """A CUDA VMM pool imported into this process: a reservation of the pool's whole range with the
    exported chunks mapped at their offsets. Needs the pool's device current (torch does that)."""

    def __init__(self, handle):
        import torch
        self.device = handle.device
        torch.cuda.set_device(self.device)
        torch.cuda.init()
        torch.empty(1, device=f"cuda:{self.device}")  # the primary context, current on this thread
        self.reserved_bytes = handle.reserved_bytes
        va = ctypes.c_uint64(0)
        _CudaDriver.call("cuMemAddressReserve", ctypes.byref(va), handle.reserved_bytes, handle.granularity, 0, 0)
        self.base = va.value
        self._mapped = {}  # offset -> (bytes, allocation handle)

    def map_chunks(self, chunks, fds):
        """Maps the chunks not mapped yet (their descriptors are closed either way)."""
        try:
            for c, fd in zip(chunks, fds, strict=True):
                if c.offset in self._mapped:
                    continue
                if c.offset + c.bytes > self.reserved_bytes:
                    raise ValueError("pool chunk outside the reserved range")
                h = ctypes.c_uint64(0)
                _CudaDriver.call("cuMemImportFromShareableHandle", ctypes.byref(h), ctypes.c_void_p(fd),
                                 _CudaDriver.HANDLE_TYPE_POSIX_FD)
                try:
                    _CudaDriver.call("cuMemMap", self.base + c.offset, c.bytes, 0, h.value, 0)
                except BaseException:
                    _CudaDriver.call("cuMemRelease", h.value)
                    raise
                self._mapped[c.offset] = (c.bytes, h.value)
                access = _CudaDriver.AccessDesc(_CudaDriver.LOCATION_TYPE_DEVICE, self.device,
                                                _CudaDriver.ACCESS_READ_WRITE)
                _CudaDriver.call("cuMemSetAccess", self.base + c.offset, c.bytes, ctypes.byref(access), 1)
        finally:
            for fd in fds:
                os.close(fd)

    def covered(self, begins, nbytes):
        """Which of the ranges [b, b + nbytes) (b in the array `begins`) lie in mapped memory (numpy bool
        array): one binary search per range over the mapped chunks, merged where they touch."""
        if getattr(self, "_spans", None) is None or self._spans[2] != len(self._mapped):
            starts, ends = [], []
            for offset in sorted(self._mapped):
                end = offset + self._mapped[offset][0]
                if ends and ends[-1] == offset:
                    ends[-1] = end
                else:
                    starts.append(offset)
                    ends.append(end)
            self._spans = (np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64), len(self._mapped))
        starts, ends, _ = self._spans
        if not len(starts):
            return np.zeros(len(begins), dtype=bool)
        begins = np.asarray(begins, dtype=np.int64)
        i = np.searchsorted(starts, begins, side="right") - 1
        return (i >= 0) & (ends[np.maximum(i, 0)] >= begins + nbytes)

    def tensor(self, nbytes):
        """A torch uint8 tensor over the first `nbytes` of the range (no copy)."""
        import torch

        class _View:
            __cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (self.base, False),
                                        "version": 3, "strides": None, "stream": None}
        return torch.as_tensor(_View(), device=f"cuda:{self.device}")

    def close(self):
        import torch
        torch.cuda.synchronize(self.device)  # nothing of ours may still read or write the range
        for offset, (nbytes, h) in self._mapped.items():
            _CudaDriver.call("cuMemUnmap", self.base + offset, nbytes)
            _CudaDriver.call("cuMemRelease", h)
        self._mapped.clear()
        _CudaDriver.call("cuMemAddressFree", self.base, self.reserved_bytes)


class MappedPool:
    """A layout's resident pages, shared with kvtierd. Use as a context manager or call close().

    on_gpu: False for a host-device pool (numpy and torch CPU views), True for a CUDA pool (torch CUDA
    views only). Writes through a CUDA view are ordered by the caller's CUDA stream: synchronize it before
    telling the daemon the pages are ready (KvTierCache does before Commit)."""

    def __init__(self, handle, fd=None, mapping=None, cuda=None, refresh=None):
        self.handle = handle
        self.num_slots = handle.num_slots
        self.page_bytes = handle.page_bytes
        self._fd = fd
        self._mmap = mapping
        self._cuda = cuda
        self._refresh = refresh
        self._pool = None  # the whole slot range as one tensor, built on first use
        self.on_gpu = cuda is not None
        # The whole pool, read/write: numpy over the host mapping, torch uint8 on the device.
        self.bytes = cuda.tensor(handle.num_slots * handle.page_bytes) if cuda else np.frombuffer(mapping, np.uint8)
        spec = handle.layout
        self.shape = (spec.num_layers, 2, spec.num_kv_heads, spec.block_size, spec.head_dim)
        formats = {c.format for c in handle.resident_codecs}
        self.dtype = None  # numpy dtype of page_values, when every segment is a pass-through format
        if formats == {_FORMAT_FP16}:
            self.dtype = np.float16
        elif formats == {_FORMAT_BF16}:
            self.dtype = "bfloat16"  # numpy has none: page_tensor() only

    @classmethod
    def open(cls, handle, timeout=5.0, refresh=None):
        """Maps the pool described by a GetPoolHandleResponse (fetching its descriptors). `refresh`, a
        callable returning a fresh GetPoolHandleResponse, lets a CUDA mapping follow the pool's growth."""
        if handle.num_slots <= 0 or handle.reserved_bytes < handle.page_bytes * handle.num_slots:
            raise ValueError("pool handle's slots do not fit its range")
        if handle.kind == pb.POOL_KIND_CUDA_VMM:
            cuda = _CudaVmmMapping(handle)
            try:
                cuda.map_chunks(handle.chunks, fetch_fds(handle.fd_socket, handle.fd_ticket, timeout))
            except BaseException:
                cuda.close()
                raise
            return cls(handle, cuda=cuda, refresh=refresh)
        if handle.kind != pb.POOL_KIND_HOST_MEMFD:
            raise NotImplementedError(
                f"pool kind {pb.PoolKind.Name(handle.kind)}: mapping a legacy CUDA IPC pool from Python is not "
                "implemented; use the C++ client library (MappedPool::Map) or the daemon's Attend")
        fds = fetch_fds(handle.fd_socket, handle.fd_ticket, timeout)
        try:
            if len(fds) != 1 or len(handle.chunks) != 1:
                raise ValueError(f"a host pool comes as one descriptor, got {len(fds)} for {len(handle.chunks)} chunks")
            mapping = mmap.mmap(fds[0], handle.reserved_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return cls(handle, fds[0], mapping)

    def _check(self, slot):
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} outside the pool's {self.num_slots} slots")

    def ensure_mapped(self, slots):
        """Makes sure the pages of `slots` are mapped (CUDA pools: maps chunks the daemon committed since;
        a no-op on the host device). Touching an unmapped page of a CUDA pool would fault the context."""
        if not self.on_gpu:
            return
        wanted = np.unique(np.asarray(slots, dtype=np.int64))
        if len(wanted) and (wanted[0] < 0 or wanted[-1] >= self.num_slots):
            self._check(int(wanted[0] if wanted[0] < 0 else wanted[-1]))

        def missing():
            return wanted[~self._cuda.covered(wanted * self.page_bytes, self.page_bytes)].tolist()

        if not missing():
            return
        if self._refresh is None:
            raise RuntimeError("slots lie in pool chunks committed after this mapping, and no refresh was given")
        h = self._refresh()
        self._cuda.map_chunks(h.chunks, fetch_fds(h.fd_socket, h.fd_ticket))
        if missing():
            raise RuntimeError(f"slots {missing()[:4]} lie in pool memory the daemon has not committed")

    def page(self, slot):
        """Slot `slot`'s resident page bytes: a writable uint8 view into the pool (numpy on the host device,
        a torch CUDA tensor for a CUDA pool)."""
        self._check(slot)
        self.ensure_mapped([slot])
        return self.bytes[slot * self.page_bytes:(slot + 1) * self.page_bytes]

    def page_values(self, slot):
        """Slot `slot`'s page as a writable float16 numpy view [layers][K, V][kv_heads][tokens][head_dim]
        (host-device fp16 pools; quantized resident formats are read through read_blocks or attention)."""
        if self.on_gpu:
            raise TypeError("page_values is numpy, for host-device pools; use page_tensor on a CUDA pool")
        if self.dtype is not np.float16:
            raise TypeError("page_values needs fp16 resident pages (see page() for the raw bytes)")
        return self.page(slot).view(np.float16).reshape(self.shape)

    def _torch_dtype(self):
        import torch
        if self.dtype is np.float16:
            return torch.float16
        if self.dtype == "bfloat16":
            return torch.bfloat16
        raise TypeError("tensor views need fp16 or bf16 resident pages")

    def page_tensor(self, slot):
        """Slot `slot`'s page as a torch tensor [layers][K, V][kv_heads][tokens][head_dim] sharing the pool's
        memory (CPU or CUDA, fp16 or bf16)."""
        import torch
        page = self.page(slot)
        if not self.on_gpu:
            page = torch.from_numpy(page)
        return page.view(self._torch_dtype()).view(self.shape)

    def pool_tensor(self):
        """Every slot's page as one tensor [num_slots][layers][K, V][kv_heads][tokens][head_dim] (fp16 or
        bf16), for gathers and scatters over many slots. Call ensure_mapped(slots) before touching slots of
        a CUDA pool."""
        import torch
        if self._pool is None:
            raw = self.bytes[:self.num_slots * self.page_bytes]
            if not self.on_gpu:
                raw = torch.from_numpy(raw)
            self._pool = raw.view(self._torch_dtype()).view((self.num_slots,) + self.shape)
        return self._pool

    def close(self):
        """Unmaps the pool, or (host device) leaves that to the last page view the caller still holds."""
        self.bytes = None
        self._pool = None
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # views handed out are still alive: the mapping goes with the last of them
            self._mmap = None
            os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
