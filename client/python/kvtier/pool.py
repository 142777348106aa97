"""The GPU-tier pool of a layout, mapped into this process (the Python side of client/pool_mapping.h).

    pool = client.map_pool(layout)          # GetPoolHandle + the descriptor socket + mmap
    hit = client.lookup(layout, prompt, pin=True)
    page = pool.page_values(hit.blocks[0].slot)   # float16 [layers][K, V][kv_heads][tokens][head_dim]
    pool.close()

The engine reads and writes resident pages in place: slot s's page is at s * page_bytes, and blocks it
allocated are written there instead of through write_blocks. Only a slot the session holds (allocated,
or pinned by a lookup) may be touched; the daemon moves unpinned blocks between tiers at any time.

Host-device pools (kind POOL_KIND_HOST_MEMFD: one memfd, mapped MAP_SHARED) are mapped here. A CUDA pool
(VMM file descriptors, or a CUDA IPC handle) is mapped by the C++ client library (MappedPool::Map); this
module raises NotImplementedError for it rather than handing out untested device views.
"""
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


class MappedPool:
    """A layout's resident pages, shared with kvtierd. Use as a context manager or call close()."""

    def __init__(self, handle, fd, mapping):
        self.handle = handle
        self.num_slots = handle.num_slots
        self.page_bytes = handle.page_bytes
        self._fd = fd
        self._mmap = mapping
        self.bytes = np.frombuffer(mapping, dtype=np.uint8)  # the whole pool, read/write
        spec = handle.layout
        self.shape = (spec.num_layers, 2, spec.num_kv_heads, spec.block_size, spec.head_dim)
        formats = {c.format for c in handle.resident_codecs}
        self.dtype = None  # numpy dtype of page_values, when every segment is a pass-through format
        if formats == {_FORMAT_FP16}:
            self.dtype = np.float16
        elif formats == {_FORMAT_BF16}:
            self.dtype = "bfloat16"  # numpy has none: page_tensor() only

    @classmethod
    def open(cls, handle, timeout=5.0):
        """Maps the pool described by a GetPoolHandleResponse (fetching its descriptors)."""
        if handle.kind != pb.POOL_KIND_HOST_MEMFD:
            raise NotImplementedError(
                f"pool kind {pb.PoolKind.Name(handle.kind)}: mapping a CUDA pool from Python is not implemented; "
                "use the C++ client library (MappedPool::Map) or the daemon's Attend")
        fds = fetch_fds(handle.fd_socket, handle.fd_ticket, timeout)
        try:
            if len(fds) != 1 or len(handle.chunks) != 1:
                raise ValueError(f"a host pool comes as one descriptor, got {len(fds)} for {len(handle.chunks)} chunks")
            if handle.num_slots <= 0 or handle.reserved_bytes < handle.page_bytes * handle.num_slots:
                raise ValueError("pool handle's slots do not fit its range")
            mapping = mmap.mmap(fds[0], handle.reserved_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return cls(handle, fds[0], mapping)

    def _check(self, slot):
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} outside the pool's {self.num_slots} slots")

    def page(self, slot):
        """Slot `slot`'s resident page bytes: a writable uint8 view into the pool."""
        self._check(slot)
        return self.bytes[slot * self.page_bytes:(slot + 1) * self.page_bytes]

    def page_values(self, slot):
        """Slot `slot`'s page as a writable float16 view [layers][K, V][kv_heads][tokens][head_dim] (fp16
        resident pages only; quantized resident formats are read through read_blocks or attention)."""
        if self.dtype is not np.float16:
            raise TypeError("page_values needs fp16 resident pages (see page() for the raw bytes)")
        return self.page(slot).view(np.float16).reshape(self.shape)

    def page_tensor(self, slot):
        """page_values (or the bf16 page) as a torch tensor sharing the pool's memory."""
        import torch
        if self.dtype is np.float16:
            return torch.from_numpy(self.page_values(slot))
        if self.dtype == "bfloat16":
            return torch.from_numpy(self.page(slot)).view(torch.bfloat16).reshape(self.shape)
        raise TypeError("page_tensor needs fp16 or bf16 resident pages")

    def close(self):
        """Unmaps the pool, or leaves that to the last page view the caller still holds."""
        if self._mmap is not None:
            self.bytes = None
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
