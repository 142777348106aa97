"""kvtier.Client: the session model of the C++ client library (client/client.h) in Python.

A Client attaches a session on connect and keeps the Attach stream open on a background thread; the
session (its pins and private blocks) lives until close() or process exit. Errors raise KvTierError
carrying the daemon's gRPC status code and message.
"""
import os
import threading
from dataclasses import dataclass

import grpc

from kvtier.v1 import config_pb2
from kvtier.v1 import kvtier_pb2 as pb
from kvtier.v1 import kvtier_pb2_grpc as pb_grpc


class KvTierError(RuntimeError):
    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def default_target():
    if os.environ.get("KVTIER_SOCKET"):
        return "unix:" + os.environ["KVTIER_SOCKET"]
    if os.geteuid() == 0:
        return "unix:/run/kvtier/kvtierd.sock"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return f"unix:{os.environ['XDG_RUNTIME_DIR']}/kvtier/kvtierd.sock"
    return f"unix:/tmp/kvtier-{os.geteuid()}/kvtierd.sock"


@dataclass(frozen=True)
class Layout:
    layout_id: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    page_bytes: int
    offload_page_bytes: int
    activation_page_bytes: int


class Client:
    def __init__(self, target=None, tenant="", token="", client_name="kvtier-python", timeout=5.0,
                 max_message_bytes=64 << 20):
        opts = [("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes)]
        self._channel = grpc.insecure_channel(target or default_target(), options=opts)
        grpc.channel_ready_future(self._channel).result(timeout=timeout)
        self._stub = pb_grpc.KvTierStub(self._channel)
        self._attach = self._stub.Attach(pb.AttachRequest(tenant=tenant, token=token, client_name=client_name,
                                                          pid=os.getpid()))
        try:
            first = next(self._attach)
        except grpc.RpcError as e:
            raise KvTierError(e.code(), e.details()) from None
        self.session_id = first.session_id
        self.is_admin = first.is_admin
        self._events = threading.Thread(target=self._drain, daemon=True)
        self._events.start()

    def _drain(self):
        try:
            for _ in self._attach:
                pass
        except grpc.RpcError:
            pass

    def close(self):
        for pool in getattr(self, "_shared_pools", {}).values():
            pool.close()
        self._shared_pools = {}
        self._attach.cancel()
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        try:
            return getattr(self._stub, method)(request)
        except grpc.RpcError as e:
            raise KvTierError(e.code(), e.details()) from None

    def register_layout(self, num_layers, num_kv_heads, head_dim, block_size=16, dtype="fp16", model_name="",
                        policy=None, layer_names=()):
        spec = pb.LayoutSpec(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim,
                             block_size=block_size, model_name=model_name, layer_names=list(layer_names),
                             dtype=pb.ACTIVATION_DTYPE_BF16 if dtype == "bf16" else pb.ACTIVATION_DTYPE_FP16)
        if policy is not None:
            spec.policy.CopyFrom(policy)
        r = self._call("RegisterLayout", pb.RegisterLayoutRequest(session_id=self.session_id, layout=spec))
        return Layout(r.layout_id, num_layers, num_kv_heads, head_dim, block_size, r.page_bytes,
                      r.offload_page_bytes, r.activation_page_bytes)

    def allocate(self, layout, count):
        return [block_id for block_id, _ in self.allocate_slots(layout, count)]

    def allocate_slots(self, layout, count):
        """Private GPU-tier blocks: [(block_id, slot)], the slot being where a mapped pool holds the page."""
        r = self._call("Allocate", pb.AllocateRequest(session_id=self.session_id, layout_id=layout.layout_id,
                                                      count=count))
        return list(zip(r.block_ids, r.slots))

    def write_blocks(self, block_ids, pages):
        blocks = [pb.BlockData(block_id=i, data=p) for i, p in zip(block_ids, pages, strict=True)]
        self._call("WriteBlocks", pb.WriteBlocksRequest(session_id=self.session_id, blocks=blocks))

    def read_blocks(self, block_ids):
        r = self._call("ReadBlocks", pb.ReadBlocksRequest(session_id=self.session_id, block_ids=list(block_ids)))
        return [b.data for b in r.blocks]

    def commit(self, layout, block_ids, tokens, parent_key=b""):
        """Publishes full blocks as one chain after `parent_key`; returns [(key, block_id, deduplicated)]."""
        bs = layout.block_size
        entries = []
        for i, bid in enumerate(block_ids):
            e = pb.CommitEntry(block_id=bid, tokens=list(tokens[i * bs:(i + 1) * bs]))
            if i == 0:
                e.parent_key = parent_key
            else:
                e.chain_previous = True
            entries.append(e)
        r = self._call("Commit", pb.CommitRequest(session_id=self.session_id, entries=entries))
        return [(x.key, x.block_id, x.deduplicated) for x in r.results]

    def lookup(self, layout, tokens, pin=False, promote=False):
        return self._call("Lookup", pb.LookupRequest(session_id=self.session_id, layout_id=layout.layout_id,
                                                     tokens=list(tokens), pin=pin, promote=promote))

    def release(self, block_ids):
        self._call("Release", pb.ReleaseRequest(session_id=self.session_id, block_ids=list(block_ids)))

    def stats(self):
        return self._call("Stats", pb.StatsRequest(session_id=self.session_id))

    def evict(self, tier="gpu", max_blocks=0):
        t = pb.TIER_GPU if tier == "gpu" else pb.TIER_HOST
        return self._call("Evict", pb.EvictRequest(session_id=self.session_id, from_tier=t, max_blocks=max_blocks))

    def attend(self, layout, layer, num_q_heads, sequences, queries, sm_scale=0.0):
        """sequences: [(block_ids, seq_len, num_queries)]; queries: bytes in the layout dtype."""
        seqs = [pb.AttendSequence(block_ids=list(b), seq_len=n, num_queries=q) for b, n, q in sequences]
        r = self._call("Attend", pb.AttendRequest(session_id=self.session_id, layout_id=layout.layout_id,
                                                  layer=layer, num_q_heads=num_q_heads, sequences=seqs,
                                                  queries=queries, sm_scale=sm_scale))
        return r.output

    # ---- Cache policy (docs/cache_policy.md) ----

    def kv_events(self, start_seq=0, tenant="", max_batch=0):
        """Yields KvEventBatch messages (from_seq, next_seq, lost, events, head_seq) until the stream ends;
        a batch whose from_seq differs from the previous next_seq, or with lost > 0, means a gap: resync
        with kv_snapshot(). Cancel by calling .cancel() on the returned iterator."""
        return self._stub.StreamKvEvents(pb.StreamKvEventsRequest(session_id=self.session_id, start_seq=start_seq,
                                                                  tenant=tenant, max_batch=max_batch))

    def kv_snapshot(self, tenant=""):
        """Every cached block visible to this session, and next_seq to stream events from."""
        return self._call("KvSnapshot", pb.KvSnapshotRequest(session_id=self.session_id, tenant=tenant))

    def pin_prefix(self, layout, tokens, ttl_ms, retain=False):
        """Pins the cached prefix of `tokens` for ttl_ms (retain=True: a retention hint); returns the reply
        (pin_id, blocks, expires_unix_ms)."""
        mode = pb.PIN_MODE_RETAIN if retain else pb.PIN_MODE_HARD
        return self._call("PinPrefix", pb.PinPrefixRequest(session_id=self.session_id, layout_id=layout.layout_id,
                                                           tokens=list(tokens), ttl_ms=ttl_ms, mode=mode))

    def release_pin(self, pin_id):
        self._call("ReleasePin", pb.ReleasePinRequest(session_id=self.session_id, pin_id=pin_id))

    def invalidate_prefix(self, layout, tokens):
        """Removes the block ending the prefix and every block chained below it, from every tier."""
        return self._call("Invalidate", pb.InvalidateRequest(
            session_id=self.session_id, prefix=pb.InvalidatePrefix(layout_id=layout.layout_id, tokens=list(tokens))))

    def warm(self, layout, prefixes, target="host"):
        """Brings each token list in `prefixes` up to the host or GPU tier; yields WarmProgress messages."""
        req = pb.WarmRequest(session_id=self.session_id, target=pb.TIER_GPU if target == "gpu" else pb.TIER_HOST,
                             prefixes=[pb.WarmPrefix(layout_id=layout.layout_id, tokens=list(p)) for p in prefixes])
        try:
            yield from self._stub.Warm(req)
        except grpc.RpcError as e:
            raise KvTierError(e.code(), e.details()) from None

    def policy_stats(self):
        return self._call("PolicyStats", pb.PolicyStatsRequest(session_id=self.session_id))

    # ---- Operators (admin sessions; kvtierctl's calls) ----

    def list_sessions(self):
        """The live sessions (SessionInfo: session_id, tenant, client_name, pid, attached_unix_ms, pins)."""
        return list(self._call("ListSessions", pb.ListSessionsRequest(session_id=self.session_id)).sessions)

    def set_tier_limits(self, gpu_bytes=0, host_bytes=0, ssd_bytes=0):
        """Resizes tiers at run time (0 leaves a tier as it is); returns the TierLimits now in force."""
        limits = config_pb2.TierLimits(gpu_pool_bytes=gpu_bytes, host_tier_bytes=host_bytes, ssd_tier_bytes=ssd_bytes)
        return self._call("SetTierLimits", pb.SetTierLimitsRequest(session_id=self.session_id, limits=limits)).limits

    def set_tenant_quota(self, tenant, gpu_bytes=0, host_bytes=0, ssd_bytes=0):
        """Caps what one tenant's blocks may occupy per tier (0: no cap)."""
        quota = pb.TenantQuotaSpec(gpu_bytes=gpu_bytes, host_bytes=host_bytes, ssd_bytes=ssd_bytes)
        return self._call("SetTenantQuota", pb.SetTenantQuotaRequest(session_id=self.session_id, tenant=tenant,
                                                                     quota=quota))

    def flush(self, to_tier=""):
        """Gives every committed block a copy in the SSD tier ("ssd": durable, the default with an SSD tier)
        or in host memory ("host"); returns FlushResponse (blocks_written, blocks_not_written, durable)."""
        return self._call("Flush", pb.FlushRequest(session_id=self.session_id, to_tier=_tier(to_tier)))

    def drain(self, tier, wait_ms=0):
        """Moves every block out of the GPU ("gpu") or host ("host") tier, retrying up to wait_ms while
        pinned blocks remain; returns DrainResponse (blocks_moved, blocks_remaining, drained)."""
        return self._call("Drain", pb.DrainRequest(session_id=self.session_id, tier=_tier(tier), wait_ms=wait_ms))

    # ---- Calibration and static scales (admin; docs/calibration.md) ----

    def start_calibration(self, layout=None, target_session_id=0):
        layout_id = layout.layout_id if layout is not None else 0
        self._call("StartCalibration", pb.StartCalibrationRequest(session_id=self.session_id, layout_id=layout_id,
                                                                  target_session_id=target_session_id))

    def stop_calibration(self):
        return self._call("StopCalibration", pb.StopCalibrationRequest(session_id=self.session_id))

    def export_calibration(self, layout=None):
        """The statistics gathered so far as a scales file (StaticScalesFile, protobuf text format)."""
        layout_id = layout.layout_id if layout is not None else 0
        return self._call("ExportCalibration", pb.ExportCalibrationRequest(session_id=self.session_id,
                                                                           layout_id=layout_id))

    def load_static_scales(self, layout, scales_file, include=(), exclude=(), fmt=""):
        """Registers a variant of `layout` whose offload copy uses the calibrated scales of `scales_file`
        (bytes or str, protobuf text format) for the layers selected by include/exclude."""
        policy = config_pb2.StaticScalesPolicy(include=list(include), exclude=list(exclude), format=fmt)
        data = scales_file.encode() if isinstance(scales_file, str) else bytes(scales_file)
        return self._call("LoadStaticScales", pb.LoadStaticScalesRequest(
            session_id=self.session_id, layout_id=layout.layout_id, scales_file=data, policy=policy))

    # ---- Prefetch and the mapped pool ----

    def prefetch(self, layout, tokens=(), keys=(), pin=False):
        """Starts bringing a cached prefix (tokens, or its block keys in order) up to the GPU tier in the
        background; returns PrefetchResponse (prefetch_id, blocks_requested)."""
        return self._call("Prefetch", pb.PrefetchRequest(session_id=self.session_id, layout_id=layout.layout_id,
                                                         tokens=list(tokens), keys=list(keys), pin=pin))

    def get_prefetch(self, prefetch_id, wait_ms=0):
        """A prefetch's progress, waiting up to wait_ms for it to finish: GetPrefetchResponse (state,
        blocks_ready, prefix_end, blocks)."""
        return self._call("GetPrefetch", pb.GetPrefetchRequest(session_id=self.session_id, prefetch_id=prefetch_id,
                                                               wait_ms=wait_ms))

    def get_pool_handle(self, layout):
        """The layout's GPU-tier pool export (GetPoolHandleResponse); its descriptors are fetched with the
        one-time fd_ticket from fd_socket (kvtier.pool.fetch_fds). Needs a tenant with pool access."""
        return self._call("GetPoolHandle", pb.GetPoolHandleRequest(session_id=self.session_id,
                                                                   layout_id=layout.layout_id))

    def map_pool(self, layout):
        """Maps the layout's GPU-tier pool into this process: a kvtier.pool.MappedPool with views of the
        resident pages (numpy/torch CPU on the host device, torch CUDA for a CUDA VMM pool; kvtier.pool)."""
        from kvtier.pool import MappedPool
        return MappedPool.open(self.get_pool_handle(layout), refresh=lambda: self.get_pool_handle(layout))

    def shared_pool(self, layout):
        """map_pool, once per layout for this client: later calls return the same mapping (which follows
        the pool's growth); closed with the client."""
        pools = self.__dict__.setdefault("_shared_pools", {})
        if layout.layout_id not in pools:
            pools[layout.layout_id] = self.map_pool(layout)
        return pools[layout.layout_id]


def _tier(name):
    tiers = {"": pb.TIER_UNSPECIFIED, "gpu": pb.TIER_GPU, "host": pb.TIER_HOST, "ssd": pb.TIER_SSD}
    if name not in tiers:
        raise ValueError(f"unknown tier {name!r} (gpu, host, ssd)")
    return tiers[name]
