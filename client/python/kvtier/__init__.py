"""kvtier: Python client for kvtierd, the KV-cache memory daemon.

    import kvtier
    with kvtier.Client() as c:                 # attaches a session (released when closed or on exit)
        layout = c.register_layout(num_layers=32, num_kv_heads=8, head_dim=128, block_size=16)
        ...
"""
from kvtier._stubs import ensure_generated as _ensure_generated

_ensure_generated()

from kvtier.client import Client, KvTierError, Layout  # noqa: E402
from kvtier import oracle  # noqa: E402
from kvtier import block_hash  # noqa: E402

__all__ = ["Client", "KvTierError", "Layout", "oracle", "block_hash"]
