"""Self-verifying KV content, bit-for-bit the same as kernels/testing/kv_oracle.h.

Every value of a block is a pure function of (block seed, layer, K|V, head, token, channel); the block
seed folds every token of the prefix up to and including the block. Whoever holds the prompt can
regenerate what any block must contain.
"""
import numpy as np

_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x):
    """SplitMix64 on numpy uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def block_seed(prompt, block_size, block_index):
    h = np.uint64(0x6B76746965720001)
    end = min((block_index + 1) * block_size, len(prompt))
    for t in prompt[:end]:
        h = splitmix64(h ^ np.uint64(int(t) & 0xFFFFFFFF))
    return h


def block_values(seed, num_layers, num_kv_heads, head_dim, block_size):
    """float32 array [layers][2 (K, V)][kv_heads][tokens][head_dim] of oracle values."""
    l, o, h, t, c = np.meshgrid(np.arange(num_layers, dtype=np.uint64), np.arange(2, dtype=np.uint64),
                                np.arange(num_kv_heads, dtype=np.uint64), np.arange(block_size, dtype=np.uint64),
                                np.arange(head_dim, dtype=np.uint64), indexing="ij")
    pos = (l << np.uint64(40)) ^ (o << np.uint64(39)) ^ (h << np.uint64(30)) ^ (t << np.uint64(16)) ^ c
    r = splitmix64(np.uint64(seed) ^ splitmix64(pos))
    v = np.zeros(r.shape, dtype=np.float32)
    for i in range(4):
        v += ((r >> np.uint64(16 * i)) & np.uint64(0xFFFF)).astype(np.float32) / np.float32(32768.0) - np.float32(1.0)
    v *= np.float32(0.866)
    outlier = (o == 0) & (c % np.uint64(37) == np.uint64(5))
    v[outlier] *= np.float32(8.0)
    return v


def activation_page(seed, num_layers, num_kv_heads, head_dim, block_size, dtype=np.float16):
    """The block's activation page bytes (page order: layer, K/V, head, token, channel)."""
    return block_values(seed, num_layers, num_kv_heads, head_dim, block_size).astype(dtype).tobytes()
