"""KvTierCache: a transformers Cache whose K/V live in kvtier pages.

One cache holds one sequence (batch size 1) of one model. Its blocks are the kvtier blocks of that sequence:
a leading run of committed blocks (published under their chained prefix keys and pinned by this session,
shared with every other session of the tenant) followed by private blocks this session owns (the part
not yet committed, the partial tail included).

Two data paths (data_path=):
- "rpc" (default; any daemon, any resident format): update(k, v, layer) copies the new tokens into a host staging copy of every private page it touches and
  rewrites those pages with WriteBlocks: the daemon quantizes them into the layout's resident format.
  Segments are per (layer, K/V, head), so rewriting a page after layer l changes nothing of the layers
  before it and gives layer l's segments their final bytes.
- compatible path: the touched pages are read back (ReadBlocks, dequantized by the daemon) and layer l's
  K/V returned to whatever attention implementation the model uses; earlier tokens come from a local
  dequantized mirror that holds exactly what the pool held when they were last read.
- fast path (the model's attn_implementation is "kvtier"): no read-back and no mirror; the attention
  function runs kvtier's paged attention over the pool (the Attend RPC: decode, or prefix-extend for
  several new tokens).
- "pool" (fp16/bf16 resident pages in the activation dtype): the layout's pool is mapped into the process
  (GetPoolHandle: a CUDA VMM pool on the GPU machine, the memfd pool on the host device) and update()
  scatters the new tokens straight into the pages of the sequence's slots on the model's device; the
  compatible path gathers K/V back out of the pool with one indexed copy per layer, so a prefix paged in
  by the daemon reaches the model without passing through the host. The engine's writes are
  stream-ordered: the cache synchronizes the current stream before it commits (the daemon reads the
  pages on its own stream when it pages them out). The fast path still attends through the Attend RPC.
- after the last layer of a step, full blocks whose token ids are known are committed (Commit with the
  previous block's key as parent), so other processes find them with Lookup.
"""
import threading

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.generation.logits_process import LogitsProcessor

from kvtier.client import KvTierError
from kvtier.v1 import config_pb2
from kvtier.v1 import kvtier_pb2 as pb

_ACT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_MAX_BLOCKS_PER_CALL = 4096  # daemon/service.h kMaxBlocksPerCall


def precision_policy(resident="fp16", offload=None):
    """A PrecisionPolicy with one codec for K and V in the resident (GPU-tier) and offload (host/SSD) formats.

    resident/offload: fp16 | bf16 | fp8_e4m3 | fp8_e5m2 | int8 | int4 (the formats' default groupings);
    offload None keeps the daemon's default (int8).
    """
    p = config_pb2.PrecisionPolicy()
    p.resident_key.format = resident
    p.resident_value.format = resident
    if offload is not None:
        p.offload_key.format = offload
        p.offload_value.format = offload
    return p


def _config_shape(config):
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_layers = text.num_hidden_layers
    num_q_heads = text.num_attention_heads
    num_kv_heads = getattr(text, "num_key_value_heads", None) or num_q_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // num_q_heads
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        raise ValueError(f"KvTierCache serves full-attention layers only; the model has layer types {set(layer_types)}")
    if getattr(text, "sliding_window", None) is not None:
        raise ValueError("KvTierCache does not serve sliding-window attention")
    return text, num_layers, num_q_heads, num_kv_heads, head_dim


class _KvTierLayer(CacheLayerMixin):
    """The per-layer view transformers expects; the data is the cache's shared block list."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, cache, layer):
        super().__init__()
        self._cache = cache
        self._layer = layer

    def lazy_initialization(self, key_states, value_states):
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return self._cache.update(key_states, value_states, self._layer)

    def get_mask_sizes(self, query_length):
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self):
        return self._cache._len[self._layer]

    def get_max_length(self):
        return -1

    def get_max_cache_shape(self):  # transformers < 5.16 name
        return -1

    def reset(self):
        self._cache.reset()

    def reorder_cache(self, beam_idx):
        if beam_idx.numel() != 1 or int(beam_idx.reshape(-1)[0]) != 0:
            raise NotImplementedError("KvTierCache holds one sequence: beam search is not supported")

    def crop(self, tokens_to_remove):
        raise NotImplementedError("KvTierCache cannot crop: committed blocks are shared and immutable")

    def batch_repeat_interleave(self, repeats):
        if repeats != 1:
            raise NotImplementedError("KvTierCache holds one sequence")

    def batch_select_indices(self, indices):
        if indices.numel() != 1:
            raise NotImplementedError("KvTierCache holds one sequence")

    def offload(self):
        pass

    def prefetch(self):
        pass


class KvTierCache(Cache):
    """A transformers Cache for one sequence whose K/V are kvtier blocks of `client`'s session.

    config: the model's config (its shape becomes the kvtier layout).
    client: a connected kvtier.Client; its session owns the private blocks and the pins.
    policy: a kvtier.v1.PrecisionPolicy (see precision_policy()); None: the daemon's default policy.
    dtype: activation dtype of the pages, "fp16" or "bf16"; None: from the model's dtype (fp16 for fp32 models).
    commit: publish full blocks whose token ids are known (load_prefix, observe_tokens).
    observer: called as observer(layer, key_states, value_states) on every update before the write (e.g. a
      KvStatsRecorder collecting calibration statistics).
    data_path: "rpc" (pages through WriteBlocks/ReadBlocks) or "pool" (the mapped pool; see the module doc).
    """

    def __init__(self, config, client, *, policy=None, dtype=None, block_size=16, model_name=None, commit=True,
                 observer=None, data_path="rpc"):
        self.config = config
        text, num_layers, num_q_heads, num_kv_heads, head_dim = _config_shape(config)
        if dtype is None:
            dtype = "bf16" if getattr(text, "dtype", None) in (torch.bfloat16, "bfloat16") else "fp16"
        if dtype not in _ACT_DTYPES:
            raise ValueError(f"dtype must be fp16 or bf16, not {dtype!r}")
        self.client = client
        self.act_dtype = _ACT_DTYPES[dtype]
        self.num_layers, self.num_q_heads, self.num_kv_heads, self.head_dim = (num_layers, num_q_heads,
                                                                               num_kv_heads, head_dim)
        self.layout = client.register_layout(
            num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim, block_size=block_size,
            dtype=dtype, model_name=model_name or getattr(text, "model_type", "") or "", policy=policy,
            layer_names=[f"model.layers.{i}.self_attn" for i in range(num_layers)])
        self.block_size = block_size
        self.commit_enabled = commit
        self.observer = observer
        self._page_shape = (num_layers, 2, num_kv_heads, block_size, head_dim)
        self._page_bytes = self.layout.activation_page_bytes
        # Blocks per ReadBlocks/WriteBlocks call: stay well below the 64 MiB message limit.
        self._per_call = max(1, min(_MAX_BLOCKS_PER_CALL, (32 << 20) // self._page_bytes))
        if data_path not in ("rpc", "pool"):
            raise ValueError(f"data_path must be rpc or pool, not {data_path!r}")
        self.data_path = data_path
        self._pool = None
        self._kernels = None  # pool data path, fast path: kvtier.kernels.PoolAttention, made on first use
        if data_path == "pool":
            self._pool = client.shared_pool(self.layout)  # one mapping per layout and client
            if self._pool.dtype != {"fp16": np.float16, "bf16": "bfloat16"}[dtype]:
                raise ValueError(f"data_path='pool' needs {dtype} resident pages (the activation dtype); the "
                                 "layout's policy quantizes them: use data_path='rpc'")
            self._pool_pages = self._pool.pool_tensor()  # [slots][L][2][H][bs][D]
        super().__init__(layers=[_KvTierLayer(self, i) for i in range(num_layers)])
        self._clear()
        self.stats = {"prefix_tokens": 0, "committed_blocks": 0, "deduplicated_blocks": 0, "written_pages": 0,
                      "read_pages": 0, "attend_calls": 0}

    # ----------------------------------------------------------------------------------------- state
    def _clear(self):
        self._ids = []            # block id of block i of the sequence
        self._slots = []          # pool data path: GPU-tier slot of block i (-1 until paged in)
        self._slot_dev = None     # ... and as a device tensor, rebuilt when _slots changes (None: stale)
        self._slot_dev32 = None   # the same as int32 (the kernels' block table), rebuilt with it
        self._committed = 0       # blocks [0, _committed) are committed and pinned; the rest are private
        self._parent_key = b""    # key of block _committed - 1
        self._stage = {}          # block index -> [L, 2, H, bs, D] host copy of a private page
        self._len = [0] * self.num_layers
        self._tokens = []         # known token ids of the sequence (prompt + observed)
        self._mirror_k = [None] * self.num_layers  # compatible path: [H, capacity, D] per layer
        self._mirror_v = [None] * self.num_layers
        self._mirror_len = [0] * self.num_layers
        self._page_in = None      # a _PageIn of the loaded prefix still under way

    @property
    def block_ids(self):
        return list(self._ids)

    @property
    def committed_blocks(self):
        return self._committed

    @property
    def fast_path(self):
        """True when the model attends through kvtier (attn_implementation "kvtier")."""
        from kvtier.transformers._attention import ATTENTION_NAME
        return getattr(self.config, "_attn_implementation", None) == ATTENTION_NAME

    def release(self):
        """Drops every pin and frees the private blocks; the cache is empty afterwards."""
        if self._page_in is not None:
            self._page_in.thread.join()  # its own extra pins are dropped by the thread itself
        ids = list(self._ids)
        self._clear()
        for i in range(0, len(ids), _MAX_BLOCKS_PER_CALL):
            self.client.release(ids[i:i + _MAX_BLOCKS_PER_CALL])

    def reset(self):
        self.release()

    # ----------------------------------------------------------------------------- prefix reuse
    def load_prefix(self, input_ids, overlap=True):
        """Looks the prompt up before prefill; returns how many leading tokens the cache now holds.

        The longest cached run of full blocks is pinned and paged in to the GPU tier (from host or SSD when
        it was paged out). With overlap, blocks found below the GPU tier are paged in on a background thread
        while the model starts on the remainder; the first read or attention of the prefix waits for it.
        At least the last prompt token is always left to compute (generate needs its logits). The prompt's
        token ids are remembered so that its full blocks are committed after prefill.
        """
        tokens = self._token_list(input_ids)
        if any(self._len) or self._ids:
            raise RuntimeError("load_prefix needs an empty cache (call release() first)")
        self._tokens = tokens
        usable = (len(tokens) - 1) // self.block_size
        if usable <= 0:
            return 0
        wanted = tokens[:usable * self.block_size]
        hit = self.client.lookup(self.layout, wanted, pin=True, promote=not overlap)
        blocks = list(hit.blocks)
        if not blocks:
            return 0
        self._ids = [b.block_id for b in blocks]
        self._slots = [b.slot if b.tier == pb.TIER_GPU else -1 for b in blocks]
        self._slot_dev = None
        self._committed = len(blocks)
        self._parent_key = blocks[-1].key
        n = len(blocks) * self.block_size
        self._len = [n] * self.num_layers
        self.stats["prefix_tokens"] = n
        self.stats["prefix_tiers"] = sorted({pb.Tier.Name(b.tier) for b in blocks})
        if overlap and any(b.tier != pb.TIER_GPU for b in blocks):
            self._page_in = _PageIn(self.client, self.layout, tokens[:n], self._ids)
        return n

    def _prefix_ready(self):
        """Waits for a background page-in of the loaded prefix (raises what it raised)."""
        if self._page_in is not None:
            page_in, self._page_in = self._page_in, None
            page_in.wait()
            self._slots[:len(page_in.slots)] = page_in.slots
            self._slot_dev = None

    def observe_tokens(self, input_ids):
        """Tells the cache the sequence's token ids so far (prompt + generated); commits what became full."""
        tokens = self._token_list(input_ids)
        if tokens[:len(self._tokens)] != self._tokens[:len(tokens)]:
            raise ValueError("observed tokens disagree with the tokens the cache already holds")
        if len(tokens) > len(self._tokens):
            self._tokens = tokens
        self._commit_full_blocks()

    def token_observer(self):
        """A LogitsProcessor for generate() that feeds observe_tokens, so that generated blocks get committed."""
        return TokenObserver(self)

    @staticmethod
    def _token_list(input_ids):
        if isinstance(input_ids, torch.Tensor):
            if input_ids.dim() == 2:
                if input_ids.shape[0] != 1:
                    raise ValueError("KvTierCache holds one sequence (batch size 1)")
                input_ids = input_ids[0]
            return [int(t) for t in input_ids.tolist()]
        return [int(t) for t in input_ids]

    def _commit_full_blocks(self):
        if not self.commit_enabled:
            return
        full = min(min(self._len), len(self._tokens)) // self.block_size
        if full <= self._committed:
            return
        bs = self.block_size
        first = self._committed
        ids = self._ids[first:full]
        if self._pool is not None and self._pool.on_gpu:
            torch.cuda.current_stream(self._pool_pages.device).synchronize()  # the pages are written before
        results = self.client.commit(self.layout, ids, self._tokens[first * bs:full * bs], parent_key=self._parent_key)
        deduplicated = 0
        for i, (key, block_id, dedup) in enumerate(results):
            self._ids[first + i] = block_id
            self._stage.pop(first + i, None)
            deduplicated += int(dedup)
        self.stats["committed_blocks"] += len(results)
        self.stats["deduplicated_blocks"] += deduplicated
        self._committed = full
        self._parent_key = results[-1][0]
        if deduplicated:
            self._prefix_ready()
            # Another session had published these blocks first: ours were freed and theirs pinned for us, but
            # theirs may sit in the host or SSD tier. A promoting lookup of the prefix pages them in (and pins
            # the chain once more: those extra pins are dropped again, ours keep them in place).
            hit = self.client.lookup(self.layout, self._tokens[:full * bs], promote=True)
            extra = [b.block_id for b in hit.blocks]
            if extra[:full] != self._ids[:full]:
                self.client.release(extra)
                raise RuntimeError("the committed prefix changed under a deduplicated commit")
            if self._pool is not None:
                self._slots[:full] = [b.slot for b in hit.blocks[:full]]
                self._slot_dev = None
            self.client.release(extra)

    # ------------------------------------------------------------------------------------ update
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if key_states.shape[0] != 1:
            raise ValueError(f"KvTierCache holds one sequence; got batch size {key_states.shape[0]}")
        if key_states.shape[1] != self.num_kv_heads or key_states.shape[-1] != self.head_dim:
            raise ValueError(f"K/V of shape {tuple(key_states.shape)} do not match the layout "
                             f"({self.num_kv_heads} KV heads of {self.head_dim})")
        layer = self.layers[layer_idx]
        if not layer.is_initialized:
            layer.lazy_initialization(key_states, value_states)
        if self.observer is not None:
            self.observer(layer_idx, key_states, value_states)
        n = key_states.shape[2]
        start = self._len[layer_idx]
        end = start + n
        bs = self.block_size
        if start < self._committed * bs:
            raise RuntimeError(f"layer {layer_idx}: writing at token {start} inside committed blocks")
        self._ensure_blocks(end)
        touched = list(range(start // bs, (end - 1) // bs + 1))
        if self._pool is not None:
            self._scatter(key_states[0], value_states[0], layer_idx, start, end)
        else:
            k = key_states[0].detach().to(device="cpu", dtype=self.act_dtype)
            v = value_states[0].detach().to(device="cpu", dtype=self.act_dtype)
            for b in touched:
                lo, hi = max(start, b * bs), min(end, (b + 1) * bs)
                page = self._stage[b]
                page[layer_idx, 0, :, lo - b * bs:hi - b * bs] = k[:, lo - start:hi - start]
                page[layer_idx, 1, :, lo - b * bs:hi - b * bs] = v[:, lo - start:hi - start]
            self._write(touched)
        self._len[layer_idx] = end
        if self.fast_path:
            out = self._attend_handles(key_states, value_states, layer_idx, end, n)
        else:
            out = self._dequantized(key_states, layer_idx, start, end, touched)
        if layer_idx == self.num_layers - 1:
            self._commit_full_blocks()
        return out

    def _ensure_blocks(self, end):
        need = -(-end // self.block_size) - len(self._ids)
        if need <= 0:
            return
        if self._pool is not None:
            for bid, slot in self.client.allocate_slots(self.layout, need):
                self._ids.append(bid)
                self._slots.append(slot)
            self._slot_dev = None
            return
        for bid in self.client.allocate(self.layout, need):
            self._stage[len(self._ids)] = torch.zeros(self._page_shape, dtype=self.act_dtype)
            self._ids.append(bid)

    def _slot_table(self):
        """Every block's slot as an index tensor on the pool's device, its pages mapped. Rebuilt (one small
        copy) only when the block list changed, not per layer: on the GPU each host-to-device copy of an
        index would wait for the model's queued work."""
        self._prefix_ready()
        if self._slot_dev is None:
            if any(x < 0 for x in self._slots):
                raise RuntimeError("a block of the sequence is not in the GPU tier")
            self._pool.ensure_mapped(self._slots)
            self._slot_dev = torch.tensor(self._slots, dtype=torch.long, device=self._pool_pages.device)
            self._slot_dev32 = self._slot_dev.to(torch.int32)
        return self._slot_dev

    def _slot_index(self, blocks):
        """The slots of the consecutive sequence blocks `blocks` (a range or list) as a device index tensor."""
        return self._slot_table()[blocks[0]:blocks[-1] + 1]

    def _scatter(self, k, v, layer, start, end):
        """Pool data path: tokens [start, end) of K/V ([H, n, D]) into their blocks' pages, in place."""
        bs = self.block_size
        dev, dt = self._pool_pages.device, self._pool_pages.dtype
        pos = torch.arange(start, end, device=dev)
        slot = self._slot_table()[pos // bs]
        off = pos % bs
        # Advanced indices on the slot and token axes: the indexed view is [n, H, D].
        self._pool_pages[slot, layer, 0, :, off] = k.detach().to(device=dev, dtype=dt).transpose(0, 1)
        self._pool_pages[slot, layer, 1, :, off] = v.detach().to(device=dev, dtype=dt).transpose(0, 1)
        self.stats["written_pages"] += int((end - 1) // bs - start // bs + 1)

    def _gather(self, layer, blocks, limit):
        """Pool data path: K and V [H, tokens, D] of `blocks` (consecutive) of one layer, cut at token `limit`."""
        bs = self.block_size
        pages = self._pool_pages[self._slot_index(blocks), layer]  # [n, 2, H, bs, D], one indexed copy
        n = len(blocks)
        k = pages[:, 0].transpose(0, 1).reshape(self.num_kv_heads, n * bs, self.head_dim)
        v = pages[:, 1].transpose(0, 1).reshape(self.num_kv_heads, n * bs, self.head_dim)
        keep = limit - blocks[0] * bs
        self.stats["read_pages"] += n
        return k[:, :keep], v[:, :keep]

    def _write(self, blocks):
        for i in range(0, len(blocks), self._per_call):
            chunk = blocks[i:i + self._per_call]
            self.client.write_blocks([self._ids[b] for b in chunk],
                                     [self._stage[b].view(torch.uint8).numpy().tobytes() for b in chunk])
        self.stats["written_pages"] += len(blocks)

    def _read(self, blocks):
        """The pages of `blocks` as [L, 2, H, bs, D] tensors in the activation dtype (dequantized by kvtierd)."""
        self._prefix_ready()
        pages = []
        for i in range(0, len(blocks), self._per_call):
            chunk = blocks[i:i + self._per_call]
            for data in self.client.read_blocks([self._ids[b] for b in chunk]):
                pages.append(torch.frombuffer(bytearray(data), dtype=self.act_dtype).view(self._page_shape))
        self.stats["read_pages"] += len(blocks)
        return pages

    # ------------------------------------------------------------------------- compatible path
    def _mirror_reserve(self, layer, tokens, like):
        k = self._mirror_k[layer]
        if k is not None and k.shape[1] >= tokens and k.dtype == like.dtype and k.device == like.device:
            return
        cap = max(tokens, 2 * (k.shape[1] if k is not None else 0), 256)
        shape = (self.num_kv_heads, cap, self.head_dim)
        nk = torch.empty(shape, dtype=like.dtype, device=like.device)
        nv = torch.empty(shape, dtype=like.dtype, device=like.device)
        if k is not None:
            m = self._mirror_len[layer]
            nk[:, :m] = self._mirror_k[layer][:, :m].to(like)
            nv[:, :m] = self._mirror_v[layer][:, :m].to(like)
        self._mirror_k[layer], self._mirror_v[layer] = nk, nv

    def _fill_mirror(self, layers, blocks, pages, limit):
        bs = self.block_size
        if self._pool is not None:  # pages is None: gathered out of the pool per layer
            lo = blocks[0] * bs
            for layer in layers:
                k, v = self._gather(layer, blocks, limit)
                self._mirror_k[layer][:, lo:limit] = k.to(self._mirror_k[layer])
                self._mirror_v[layer][:, lo:limit] = v.to(self._mirror_v[layer])
            return
        for b, page in zip(blocks, pages):
            lo, hi = b * bs, min((b + 1) * bs, limit)
            for layer in layers:
                self._mirror_k[layer][:, lo:hi] = page[layer, 0, :, :hi - lo].to(self._mirror_k[layer])
                self._mirror_v[layer][:, lo:hi] = page[layer, 1, :, :hi - lo].to(self._mirror_v[layer])

    def _dequantized(self, like, layer, start, end, touched):
        bs = self.block_size
        self._mirror_reserve(layer, end, like)
        if self._mirror_len[layer] < start:
            # Blocks this process did not write (a loaded prefix): one read fills every layer that lacks them.
            gap = self._mirror_len[layer]
            lacking = [x for x in range(self.num_layers) if self._mirror_len[x] == gap]
            for x in lacking:
                self._mirror_reserve(x, start, like)
            blocks = list(range(gap // bs, -(-start // bs)))
            self._fill_mirror(lacking, blocks, None if self._pool is not None else self._read(blocks), start)
            for x in lacking:
                self._mirror_len[x] = start
        self._fill_mirror([layer], touched, None if self._pool is not None else self._read(touched), end)
        self._mirror_len[layer] = end
        return (self._mirror_k[layer][:, :end].unsqueeze(0), self._mirror_v[layer][:, :end].unsqueeze(0))

    # ------------------------------------------------------------------------------- fast path
    def _attend_handles(self, key_states, value_states, layer, seq_len, num_new):
        """What update() returns on the fast path: the new K/V tensors (no copy) tagged with the step, which
        kvtier_attention_forward turns into an Attend over the pool."""
        tag = (self, layer, seq_len, num_new)
        key_states._kvtier_step = tag
        return key_states, value_states

    def attend(self, layer, query, seq_len, scaling):
        """Paged attention of `query` [1, Hq, n, D] (the sequence's last n positions) over the pool.

        Returns [1, n, Hq, D] in the query's dtype: decode when n == 1, prefix-extend (causal within the new
        rows) otherwise; runs on the daemon's device through the Attend RPC.
        """
        if query.shape[0] != 1 or query.shape[1] != self.num_q_heads:
            raise ValueError(f"query of shape {tuple(query.shape)} for a cache of {self.num_q_heads} query heads")
        n = query.shape[2]
        self._prefix_ready()
        if self._pool is not None:  # the kernels in this process, over the mapped pool, on the model's stream
            nblocks = -(-seq_len // self.block_size)
            if self._kernels is None:
                from kvtier.kernels import PoolAttention
                self._kernels = PoolAttention(self._pool)
            dev = self._pool_pages.device
            q = query[0].detach().transpose(0, 1).to(device=dev, dtype=self.act_dtype)
            self._slot_table()  # current, with its int32 twin
            o = self._kernels.attend(layer, q, self._slots[:nblocks], seq_len, float(scaling) if scaling else 0.0,
                                     slots_dev=self._slot_dev32[:nblocks])
            self.stats["attend_calls"] += 1
            return o.to(device=query.device, dtype=query.dtype).unsqueeze(0)
        q = query[0].detach().transpose(0, 1).to(device="cpu", dtype=self.act_dtype).contiguous()
        nblocks = -(-seq_len // self.block_size)
        out = self.client.attend(self.layout, layer, self.num_q_heads,
                                 [(self._ids[:nblocks], seq_len, n)], q.view(torch.uint8).numpy().tobytes(),
                                 sm_scale=float(scaling) if scaling else 0.0)
        self.stats["attend_calls"] += 1
        o = torch.frombuffer(bytearray(out), dtype=self.act_dtype).view(n, self.num_q_heads, self.head_dim)
        return o.to(device=query.device, dtype=query.dtype).unsqueeze(0)

    # ------------------------------------------------------------------------ transformers API
    def get_seq_length(self, layer_idx=0):
        return self._len[layer_idx] if layer_idx < self.num_layers else 0

    def get_mask_sizes(self, query_length, layer_idx=0):
        return self.get_seq_length(layer_idx) + query_length, 0

    def get_max_length(self, layer_idx=None):
        return -1

    @property
    def is_compileable(self):
        return False

    @property
    def batch_size(self):
        return 1

    def __del__(self):
        try:
            if self._ids:
                self.release()
        except (KvTierError, AttributeError, ValueError):
            pass  # the session or channel is already gone: the daemon frees everything with the session


class _PageIn:
    """A promoting Lookup of an already pinned prefix on a background thread (gRPC waits release the GIL, so
    the model computes meanwhile). Its own extra pins are released as soon as it is done."""

    def __init__(self, client, layout, tokens, ids):
        self.error = None
        self.slots = []  # the blocks' GPU-tier slots once paged in
        self.thread = threading.Thread(target=self._run, args=(client, layout, tokens, list(ids)), daemon=True)
        self.thread.start()

    def _run(self, client, layout, tokens, ids):
        try:
            hit = client.lookup(layout, tokens, promote=True)
            got = [b.block_id for b in hit.blocks]
            self.slots = [b.slot for b in hit.blocks]
            if got:
                client.release(got)
            if got != ids:
                raise RuntimeError(f"page-in of the prefix found {len(got)} of its {len(ids)} blocks")
        except Exception as e:  # noqa: BLE001 (handed to the waiting thread)
            self.error = e

    def wait(self):
        self.thread.join()
        if self.error is not None:
            raise self.error


class TokenObserver(LogitsProcessor):
    """LogitsProcessor that reports the growing sequence to a KvTierCache (commits generated full blocks)."""

    def __init__(self, cache):
        self.cache = cache

    def __call__(self, input_ids, scores):
        self.cache.observe_tokens(input_ids)
        return scores
