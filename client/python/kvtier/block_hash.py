"""kvtier block keys (docs/block_hash.md) in pure Python, so that routers and engines compute the same
keys as kvtierd without linking anything.

    key = chain_key(parent, layout_id, tenant_salt, tokens)   # 16-byte parent, b"" or 16 zero bytes first
    keys = prefix_keys(layout_id, tenant_salt, block_size, tokens)

A key is 16 bytes: the XXH3-128 digest's low 64 bits then its high 64 bits, each little-endian (the wire
form of BlockKey). The XXH3-128 here is a straight transcription of the reference algorithm (seed 0,
default secret) for inputs of 17 bytes and more, which covers every key input: the fixed header alone is
37 bytes. tests/tiering/block_key_vectors.txt holds vectors produced by the C++ implementation.
"""
import struct

_M64 = (1 << 64) - 1
_P32_1, _P32_2, _P32_3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
_P64_1, _P64_2, _P64_3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P64_4, _P64_5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5

_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e")
_SECRET_SIZE_MIN = 136
_STRIPE = 64
_CONSUME = 8


def _r64(b, i):
    return struct.unpack_from("<Q", b, i)[0]


def _avalanche(h):
    h ^= h >> 37
    h = (h * 0x165667919E3779F9) & _M64
    return h ^ (h >> 32)


def _fold64(a, b):
    p = a * b
    return (p ^ (p >> 64)) & _M64


def _mix16(data, i, s):
    return _fold64(_r64(data, i) ^ _r64(_SECRET, s), _r64(data, i + 8) ^ _r64(_SECRET, s + 8))


def _mix32(lo, hi, data, i1, i2, s):
    lo = (lo + _mix16(data, i1, s)) & _M64
    lo ^= (_r64(data, i2) + _r64(data, i2 + 8)) & _M64
    hi = (hi + _mix16(data, i2, s + 16)) & _M64
    hi ^= (_r64(data, i1) + _r64(data, i1 + 8)) & _M64
    return lo, hi


def _finish(lo, hi, n):
    low = _avalanche((lo + hi) & _M64)
    high = ((lo * _P64_1) + (hi * _P64_4) + (n * _P64_2)) & _M64
    return low, (-_avalanche(high)) & _M64


def _len_17to128(data):
    n = len(data)
    lo, hi = (n * _P64_1) & _M64, 0
    if n > 32:
        if n > 64:
            if n > 96:
                lo, hi = _mix32(lo, hi, data, 48, n - 64, 96)
            lo, hi = _mix32(lo, hi, data, 32, n - 48, 64)
        lo, hi = _mix32(lo, hi, data, 16, n - 32, 32)
    lo, hi = _mix32(lo, hi, data, 0, n - 16, 0)
    return _finish(lo, hi, n)


def _len_129to240(data):
    n = len(data)
    lo, hi = (n * _P64_1) & _M64, 0
    for i in range(4):
        lo, hi = _mix32(lo, hi, data, 32 * i, 32 * i + 16, 32 * i)
    lo, hi = _avalanche(lo), _avalanche(hi)
    for i in range(4, n // 32):
        lo, hi = _mix32(lo, hi, data, 32 * i, 32 * i + 16, 3 + 32 * (i - 4))
    lo, hi = _mix32(lo, hi, data, n - 16, n - 32, _SECRET_SIZE_MIN - 17 - 16)
    return _finish(lo, hi, n)


def _accumulate_512(acc, data, i, s):
    for lane in range(8):
        v = _r64(data, i + 8 * lane)
        k = v ^ _r64(_SECRET, s + 8 * lane)
        acc[lane ^ 1] = (acc[lane ^ 1] + v) & _M64
        acc[lane] = (acc[lane] + (k & 0xFFFFFFFF) * (k >> 32)) & _M64


def _scramble(acc, s):
    for lane in range(8):
        a = acc[lane]
        a ^= a >> 47
        a ^= _r64(_SECRET, s + 8 * lane)
        acc[lane] = (a * _P32_1) & _M64


def _merge(acc, s, start):
    r = start
    for i in range(4):
        r = (r + _fold64(acc[2 * i] ^ _r64(_SECRET, s + 16 * i), acc[2 * i + 1] ^ _r64(_SECRET, s + 16 * i + 8))) & _M64
    return _avalanche(r)


def _long(data):
    n = len(data)
    acc = [_P32_3, _P64_1, _P64_2, _P64_3, _P64_4, _P32_2, _P64_5, _P32_1]
    stripes_per_block = (len(_SECRET) - _STRIPE) // _CONSUME
    block_len = _STRIPE * stripes_per_block
    blocks = (n - 1) // block_len
    for b in range(blocks):
        for s in range(stripes_per_block):
            _accumulate_512(acc, data, b * block_len + s * _STRIPE, s * _CONSUME)
        _scramble(acc, len(_SECRET) - _STRIPE)
    stripes = ((n - 1) - block_len * blocks) // _STRIPE
    for s in range(stripes):
        _accumulate_512(acc, data, blocks * block_len + s * _STRIPE, s * _CONSUME)
    _accumulate_512(acc, data, n - _STRIPE, len(_SECRET) - _STRIPE - 7)
    low = _merge(acc, 11, (n * _P64_1) & _M64)
    high = _merge(acc, len(_SECRET) - 64 - 11, ~(n * _P64_2) & _M64)
    return low, high


def xxh3_128(data):
    """XXH3-128 (seed 0) of `data` as (low64, high64); inputs of 17 bytes and more."""
    data = bytes(data)
    n = len(data)
    if n <= 16:
        raise ValueError("kvtier's XXH3-128 transcription covers inputs of 17 bytes and more")
    if n <= 128:
        return _len_17to128(data)
    if n <= 240:
        return _len_129to240(data)
    return _long(data)


DOMAIN = b"kvtier.v1"
ZERO_KEY = bytes(16)


def chain_key(parent, layout_id, tenant_salt, tokens):
    """The 16-byte key of a block: `parent` is the previous block's key (b"" or 16 zero bytes for the
    first block), `tenant_salt` bytes or str (UTF-8), `tokens` the block's token ids (int32)."""
    parent = bytes(parent) or ZERO_KEY
    if len(parent) != 16:
        raise ValueError("parent key must be 16 bytes")
    if isinstance(tenant_salt, str):
        tenant_salt = tenant_salt.encode("utf-8")
    if not 0 <= layout_id < (1 << 64):
        raise ValueError("layout_id must be a uint64")
    data = (DOMAIN + parent + struct.pack("<QI", layout_id, len(tenant_salt)) + tenant_salt
            + struct.pack("<%di" % len(tokens), *tokens))
    lo, hi = xxh3_128(data)
    return struct.pack("<QQ", lo, hi)


def prefix_keys(layout_id, tenant_salt, block_size, tokens):
    """Keys of every full block of `tokens`, in order (what a longest-prefix lookup walks)."""
    keys, parent = [], ZERO_KEY
    for b in range(len(tokens) // block_size):
        parent = chain_key(parent, layout_id, tenant_salt, tokens[b * block_size:(b + 1) * block_size])
        keys.append(parent)
    return keys
