// BlockStore: the page table and the one place that decides where every block lives.
//
// Design. Every block has one entry (BlockEntry) keyed by a BlockId; the entry records the block's
// layout, its chained key once committed, its tier and location (GPU slot or host record), pins and
// LRU age. Tiers are exclusive: a block lives in exactly one of them. The prefix index maps committed
// keys to block ids; since a key is a hash of the whole prefix (tenant salt and layout included), a
// longest-prefix lookup is a walk down the chain that stops at the first miss.
//
// Moving a block (page-out GPU -> host, page-in host -> GPU) converts its bytes outside the lock: the
// entry is marked `moving`, the device backend transcodes, then the entry is switched over under the
// lock. A block is visible in its new tier only after the conversion has completed. A block pinned
// while it was being paged out stays on the GPU (the page-out is abandoned). Pinned and private
// (uncommitted) blocks are never moved or dropped.
//
// Eviction: unpinned committed blocks, prefix-tree leaves before their ancestors, least recently used
// first; GPU -> host -> SSD (when configured) -> drop. A mover thread keeps the GPU and host tiers between
// their low and high watermarks; allocations that find a tier full demote synchronously. Every mover
// marks all the entries it works on `moving` before it first releases the lock, so no two movers ever
// work on one block.
//
// Clean copies: a block paged in keeps its offload record in the host tier (while the host tier has
// room) and a later page-out of the unchanged block reuses that record instead of quantizing again, so
// a block is quantized once however often it moves (re-quantizing dequantized values drifts by a
// fraction of a step per round trip). Clean copies are the first thing host pressure frees.
//
// Warm restart: with an SSD tier, the constructor rebuilds the page table and prefix index from the SSD
// index; those blocks are served once an engine registers their layout again (layout ids are stable).
//
// Thread-safety: all public methods are thread-safe. One mutex guards the table; byte conversions run
// outside it.
#pragma once

#include <condition_variable>
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "tiering/sync.h"
#include "tiering/block_key.h"
#include "tiering/cache_policy.h"
#include "tiering/eviction_policy.h"
#include "tiering/kv_events.h"
#include "tiering/device_backend.h"
#include "tiering/host_tier.h"
#include "tiering/latency_histogram.h"
#include "tiering/layout.h"
#include "tiering/ssd/ssd_tier.h"

namespace kvtier {

using BlockId = uint64_t;
using SessionId = uint64_t;

enum class Tier : uint8_t { kGpu = 1, kHost = 2, kSsd = 3 };
const char* TierName(Tier t);

struct BlockStoreOptions {
  uint64_t gpu_pool_bytes = 256ull << 20;
  uint64_t host_tier_bytes = 1ull << 30;
  // Virtual room reserved per layout arena, as a multiple of gpu_pool_bytes (the pool can grow this far).
  int gpu_pool_growth_factor = 4;
  double gpu_high_watermark = 0.95;  // the mover demotes above this fraction of the pool...
  double gpu_low_watermark = 0.85;   // ...down to this one
  double host_high_watermark = 0.95;  // with an SSD tier: host -> SSD above this fraction...
  double host_low_watermark = 0.85;   // ...down to this one
  int max_blocks_per_call = 4096;
  // How long an Allocate waits for GPU pages already on their way out (another caller's or the mover's
  // page-out) before it reports the pool full.
  std::chrono::milliseconds gpu_room_wait{500};
  CachePolicyOptions policy;  // eviction/admission per tier, events, bandwidths (cache_policy.h)
};

struct AllocatedBlock {
  BlockId id;
  int32_t slot;
};

struct CommitItem {
  BlockId block_id;
  std::string parent_key;  // 16 bytes, or empty for the first block of a sequence
  std::vector<int32_t> tokens;
  bool chain_previous = false;  // parent is the previous item of the same call (parent_key must be empty)
};

struct CommitOutcome {
  BlockKey key;
  BlockId block_id;
  bool deduplicated;
};

struct BlockLocationInfo {
  BlockKey key;
  BlockId block_id;
  Tier tier;
  int32_t slot;
  double eta_seconds = 0;  // estimated time to bring it to the GPU tier (0 when it is there)
};

struct LookupOutcome {
  std::vector<BlockLocationInfo> blocks;
  int32_t matched_tokens = 0;
};

struct TierUsage {
  Tier tier;
  uint64_t capacity_bytes;
  uint64_t used_bytes;
  uint64_t blocks;
};

struct StoreStats {
  std::vector<TierUsage> tiers;
  uint64_t lookups = 0, lookup_blocks_requested = 0, lookup_blocks_hit = 0;
  uint64_t blocks_committed = 0, blocks_deduplicated = 0;
  uint64_t page_outs = 0, page_ins = 0, blocks_dropped = 0, checksum_failures = 0;
  uint64_t clean_copy_reuses = 0;  // page-outs that reused the block's offload record (no transcode)
  uint64_t ssd_writes = 0, ssd_reads = 0, ssd_write_failures = 0, ssd_read_failures = 0, ssd_restored = 0;
  uint64_t bytes_saved_by_quantization = 0;
  uint64_t pinned_blocks = 0, layouts = 0;
  uint64_t static_scale_clipped = 0;  // values clipped by calibrated static scales (page-outs)
  uint64_t pinned_blocks_dropped = 0;  // pinned blocks freed anyway (only a corrupt record may do that)
};

struct EvictOutcome {
  int64_t moved = 0;
  int64_t dropped = 0;
};

struct FlushOutcome {
  int64_t written = 0;         // copies made
  int64_t already_copied = 0;  // blocks that had a copy in the target tier (or live there)
  int64_t not_written = 0;     // no room in the target tier, or a write failed
};

struct DrainOutcome {
  int64_t moved = 0;
  int64_t remaining = 0;       // blocks still in the tier
  int64_t pinned = 0;          // of those, committed blocks pinned by a session
  int64_t private_blocks = 0;  // of those, uncommitted blocks
};

class BlockStore {
 public:
  // `ssd` may be null (no SSD tier). With one, the store restores the blocks it holds (warm restart).
  BlockStore(BlockStoreOptions options, std::unique_ptr<DeviceBackend> device,
             std::unique_ptr<HostAllocator> host_allocator, std::unique_ptr<SsdTier> ssd = nullptr);
  ~BlockStore();
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  DeviceBackend& device() { return *device_; }
  LayoutRegistry& layouts() { return layouts_; }
  // Calibration mode: Write() feeds the KV it writes to layouts being calibrated (docs/calibration.md).
  Calibrator& calibrator() { return calibrator_; }

  absl::StatusOr<const Layout*> RegisterLayout(const LayoutSpec& spec);

  // Private GPU-resident blocks for `session`; freed by Release or when the session ends.
  absl::StatusOr<std::vector<AllocatedBlock>> Allocate(SessionId session, uint64_t layout_id, int count);

  // Writes activation pages into the session's private blocks (all-or-nothing validation).
  absl::Status Write(SessionId session, std::span<const BlockId> ids, std::span<const std::string_view> data);

  // Paged attention for a batch of sequences made of GPU-resident blocks the session owns or has pinned.
  // `blocks[i]` are sequence i's block ids in order; the batch's block table is filled in from them.
  absl::Status Attend(SessionId session, uint64_t layout_id, std::span<const std::vector<BlockId>> blocks,
                      AttendBatch& batch);

  // Reads GPU-resident blocks the session owns or has pinned, as activation pages.
  absl::StatusOr<std::vector<std::string>> Read(SessionId session, std::span<const BlockId> ids);

  // Publishes full private blocks under their chained keys. The session keeps a pin on each result.
  absl::StatusOr<std::vector<CommitOutcome>> Commit(SessionId session, std::string_view tenant_salt,
                                                    std::span<const CommitItem> items);

  // Longest cached prefix of `tokens` (full blocks only). `pin` pins the hits for the session; `promote`
  // also pages them in to the GPU tier (a block that fails its checksum ends the prefix there).
  absl::StatusOr<LookupOutcome> Lookup(SessionId session, std::string_view tenant_salt, uint64_t layout_id,
                                       std::span<const int32_t> tokens, bool pin, bool promote);

  // Drops one pin per id held by the session, or frees the session's private block.
  absl::Status Release(SessionId session, std::span<const BlockId> ids);
  // Drops every pin and private block of a session (its lease ended).
  void ReleaseSession(SessionId session);

  // Demotes up to max_blocks (0: all) unpinned committed blocks from the GPU tier.
  EvictOutcome DemoteFromGpu(int64_t max_blocks);
  // Demotes up to max_blocks (0: all) unpinned blocks from the host tier to the SSD tier.
  EvictOutcome DemoteFromHost(int64_t max_blocks);
  // Changes tier capacities (0 keeps one); shrinking demotes or drops until the tier fits. The SSD tier
  // never drops a pinned block to shrink: it evicts unpinned ones, and when what is left does not fit it
  // stops at the smallest size (whole slabs) that keeps it; Stats() then shows the capacity it kept.
  absl::Status SetLimits(uint64_t gpu_pool_bytes, uint64_t host_tier_bytes, uint64_t ssd_tier_bytes = 0);
  // Test hook: called by an SSD shrink once it has made room, with the table lock released, just before
  // the SSD tier moves the records out of its removed slabs (the window other requests run in).
  void SetSsdShrinkHookForTesting(std::function<void()> hook);
  bool has_ssd() const { return ssd_ != nullptr; }

  // Admin operations (block_store_admin.cc).
  // Gives every committed block a copy in `to` (kSsd: a durable SSD record, kHost: an offload record in
  // host memory) without moving it; returns once the copies are durable. Never evicts to make room.
  absl::StatusOr<FlushOutcome> Flush(Tier to);
  // Moves every movable block of `tier` (kGpu or kHost) into the tiers below without dropping any:
  // room below is made only by moving further down. Retries for up to `wait` while pinned blocks remain.
  absl::StatusOr<DrainOutcome> Drain(Tier tier, absl::Duration wait);
  // Pins for `session` the committed blocks named by `keys` (in order, up to the first one that is not
  // cached in the namespace of `tenant_salt` and `layout_id`) and pages them in to the GPU tier. The
  // result is the prefix that is now GPU-resident; with keep_pins false its pins are dropped again.
  // The export of `layout_id`'s arena in the GPU tier (created if it does not exist yet).
  absl::StatusOr<PoolExport> ExportPool(uint64_t layout_id);
  absl::StatusOr<LookupOutcome> PinAndPromote(SessionId session, std::string_view tenant_salt, uint64_t layout_id,
                                              std::span<const BlockKey> keys, bool keep_pins);

  StoreStats Stats() const;
  // Durations of page-out/page-in and SSD write/read batches (read by the metrics exporter).
  const MoveLatencies& latencies() const { return latencies_; }
  // Pins held by a session (tests, kvtierctl sessions).
  int64_t PinnedBy(SessionId session) const;

  // Test hook: flips one byte of a host-tier block's record, as a memory or media error would.
  bool CorruptHostRecordForTest(BlockId id);

  // ---- Cache policy layer (block_store_policy.cc, cache_policy.h) ----
  // The namespace id of a tenant salt (what events and quotas name a tenant by).
  static uint64_t TenantNs(std::string_view tenant_salt);
  // The KV event stream; it lives as long as the store.
  KvEventLog& events() const { return *events_; }
  // Charges a session's private blocks to the tenant of `tenant_salt` (quotas); call once per session.
  void SetSessionTenant(SessionId session, std::string_view tenant_salt);
  // Every committed block (of one tenant namespace, or all with only_ns == 0) and the event sequence
  // number the snapshot is current to: events from `next_seq` on happened after it.
  struct SnapshotBlock {
    BlockKey key, parent;
    uint64_t layout_id = 0, tenant_ns = 0;
    Tier tier = Tier::kGpu;
    std::string format;
    int32_t block_size = 0;
  };
  struct KvSnapshot {
    uint64_t next_seq = 0;
    std::vector<SnapshotBlock> blocks;
  };
  KvSnapshot TakeSnapshot(uint64_t only_ns) const;
  // Sets a tenant's quota per tier (0: none). Lowering one drains: the mover demotes the tenant's excess.
  absl::Status SetTenantQuota(uint64_t tenant_ns, const TenantQuota& quota);
  // Pins the cached prefix of `tokens` for `ttl_ms`: hard pins keep the blocks in their tier (and count
  // against the tenant's quota there); retention hints only make them the last eviction choice.
  struct PinOutcome {
    uint64_t pin_id = 0;
    int64_t blocks = 0;
    int64_t expires_unix_ms = 0;
  };
  absl::StatusOr<PinOutcome> PinPrefix(std::string_view tenant_salt, uint64_t layout_id,
                                       std::span<const int32_t> tokens, int64_t ttl_ms, bool hard);
  // Ends a pin early; `tenant_ns` 0 is an admin (any tenant's pin).
  absl::Status ReleasePin(uint64_t pin_id, uint64_t tenant_ns);
  // Removes blocks from every tier, with kRemoved/kInvalidated events. Scopes: the blocks of the cached
  // prefix of `tokens` and every block chained below them; all blocks of a tenant; all blocks of a layout.
  // Blocks pinned by live sessions stay (counted in `skipped_pinned`); retention pins on removed blocks end.
  struct InvalidateScope {
    enum class Kind { kPrefix, kTenant, kLayout } kind = Kind::kPrefix;
    std::string tenant_salt;  // kPrefix
    uint64_t tenant_ns = 0;   // kTenant (and kPrefix: filled in from the salt)
    uint64_t layout_id = 0;   // kPrefix, kLayout
    std::vector<int32_t> tokens;  // kPrefix
  };
  struct InvalidateOutcome {
    int64_t removed = 0;
    int64_t skipped_pinned = 0;
  };
  absl::StatusOr<InvalidateOutcome> Invalidate(const InvalidateScope& scope);
  // Warm-up: brings the cached prefix of `tokens` up to `target` (GPU, or host from SSD) without keeping
  // pins. Returns how many blocks of the prefix were found and how many are now in `target` or above.
  struct WarmOutcome {
    int64_t found = 0;
    int64_t in_target = 0;
  };
  absl::StatusOr<WarmOutcome> Warm(SessionId session, std::string_view tenant_salt, uint64_t layout_id,
                                   std::span<const int32_t> tokens, Tier target);
  PolicyStats GetPolicyStats() const;
  // Runs the pin-expiry and quota-drain pass now (the mover runs it every 200 ms).
  void RunPolicyMaintenance();

 private:
  // One page-table entry.
  struct Entry {
    BlockId id = 0;
    uint64_t layout_id = 0;
    const Layout* layout = nullptr;  // null for blocks restored from SSD until their layout is registered
    BlockKey key;
    BlockKey parent;
    uint64_t ns = 0;  // hash of the tenant salt it was committed under (0 while private)
    bool committed = false;
    SessionId owner = 0;  // private blocks only
    Tier tier = Tier::kGpu;
    int32_t slot = -1;
    std::unique_ptr<HostRecord> host;
    uint64_t record_bytes = 0;     // host/SSD record size (offload page + parameters)
    uint64_t record_checksum = 0;  // xxh3-64 of the record, carried into the SSD metadata
    int32_t pins = 0;
    bool moving = false;
    bool ssd_copy = false;  // a GPU- or host-tier block that also has a durable SSD record (Flush)
    uint64_t ssd_copy_checksum = 0;  // that record's checksum (a later page-out may quantize anew)
    int32_t children = 0;
    uint64_t last_use = 0;
    // Cache policy (block_store_policy.cc).
    std::vector<int32_t> tokens;  // committed blocks: its tokens, for events (empty after a warm restart)
    uint32_t uses = 0;            // commit, deduplicated commits and lookup hits (admission)
    int32_t depth = 0;            // position in its sequence (0: first block), for the cost policy
    int32_t retain = 0;           // retention hints on it
    uint64_t charged_ns = 0;      // what its tenant account is charged for it now
    Tier charged_tier = Tier::kGpu;
    uint64_t charged_bytes = 0;
    // The static scale set the block's offload copy is quantized with (its layout's; 0: none). Carried in
    // the SSD metadata, so that a restored block is only ever served by a layout with the same set.
    uint64_t scale_set_id = 0;
  };

  Entry* FindLocked(BlockId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  PageArena* ArenaLocked(const Layout& layout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t ResidentBytes(const Layout& l) const { return l.resident.page_bytes() + l.resident.param_bytes(); }
  void Touch(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Pin(SessionId s, Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Unpin(SessionId s, Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits until none of `entries` is being moved; false if one of them was freed meanwhile (the caller's
  // pointers to it are then invalid).
  bool WaitNotMoving(std::span<Entry* const> entries) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a block from every structure and frees its memory. An SSD-tier block's record is removed from
  // the SSD tier at once, or its key is appended to `ssd_keys` for the caller to remove in one batch (or
  // to drop, when the record is already gone).
  // `reason` is what a committed block's kRemoved event and the evictions-by-reason counters say.
  void FreeBlockLocked(Entry& e, bool dropped, std::vector<BlockKey>* ssd_keys = nullptr,
                       RemoveReason reason = RemoveReason::kEvicted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Selects up to `n` eviction victims in `tier` (only of tenant `only_ns` when non-zero), in the order
  // of cache_policy.h: quota class, leaves first, then the tier's eviction policy.
  std::vector<Entry*> PickVictimsLocked(Tier tier, int64_t n, uint64_t only_ns = 0)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pages `victims` out to the host tier (dropping what does not fit, unless !may_drop: then it stays);
  // releases the lock meanwhile.
  EvictOutcome PageOutLocked(std::vector<Entry*> victims, bool may_drop = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Switches a block to the host tier with `record` as its offload copy, freeing its GPU slot.
  void FinishPageOutLocked(const Layout& layout, Entry& e, std::unique_ptr<HostRecord> record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Converts one chunk (marked moving, host records allocated) and switches the blocks over.
  EvictOutcome PageOutChunkLocked(const Layout& layout, const PageGeometry& offload, std::span<Entry* const> chunk,
                                  std::span<std::unique_ptr<HostRecord>> records) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pages the session's pinned blocks `ids` in to the GPU tier; returns how many of them, from the front,
  // are GPU-resident now (the rest are unpinned again). May release the lock.
  size_t PromotePinnedLocked(SessionId session, std::span<const BlockId> ids) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pages pinned host-tier blocks in; returns the ids that failed (checksum or no room).
  absl::flat_hash_set<BlockId> PageInLocked(std::vector<Entry*> blocks) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees GPU-pool bytes until `bytes` more fit, demoting victims; false if impossible.
  bool MakeGpuRoomLocked(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // MakeGpuRoomLocked plus `slots` free slots in `arena`; while GPU pages are being paged out (their room
  // comes free when their copies finish), waits for them up to options_.gpu_room_wait.
  bool AwaitGpuRoomLocked(PageArena& arena, uint64_t bytes, int slots) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool GpuPageOutInFlightLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees host-tier bytes until `bytes` more fit, demoting victims to SSD (or dropping them without
  // one, unless !may_drop); may release the lock; false if impossible.
  bool MakeHostRoomLocked(uint64_t bytes, bool may_drop = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // SSD tier (block_store_ssd.cc).
  // Writes host-tier `victims` to SSD (those with an SSD copy need no write) and frees their host
  // records; releases the lock meanwhile. A victim whose write fails is dropped, or with !may_drop kept.
  EvictOutcome DemoteToSsdLocked(std::vector<Entry*> victims, bool may_drop = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads pinned SSD-tier blocks back into host records; returns the ids that failed. Blocks for which
  // the host tier has no room now are left on SSD and returned in `deferred`.
  absl::flat_hash_set<BlockId> PromoteFromSsdLocked(std::vector<Entry*> blocks, std::vector<Entry*>* deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops SSD victims until `bytes` more would fit: SSD-tier blocks (unless !may_drop), then SSD copies
  // of blocks that live above (which loses nothing).
  void MakeSsdRoomLocked(uint64_t bytes, bool may_drop = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The SSD record metadata of a block (what a restarted daemon needs to serve it).
  std::string SsdMetadataLocked(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets the SSD copy of a block above the SSD tier (the record itself is removed by the caller).
  void ForgetSsdCopyLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Warm restart: page-table entries and index for every record on SSD.
  void RestoreFromSsd();
  // The layout of an entry restored from SSD, once registered; null before.
  const Layout* ResolveLayoutLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void MoverLoop();

  // Cache policy hooks (block_store_policy.cc), called wherever a block enters or leaves a tier.
  // A committed block was published into the GPU tier (`tokens` are its tokens).
  void OnStoredLocked(Entry& e, const std::vector<int32_t>& tokens) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A committed block moved from `from` to its current tier; `evicted` when it was pushed down.
  void OnMovedLocked(Entry& e, Tier from, bool evicted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A block is about to be freed (FreeBlockLocked).
  void OnRemovedLocked(Entry& e, RemoveReason reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A lookup hit or a deduplicated commit used the block.
  void OnUsedLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Re-charges e's tenant account for the tier and bytes it occupies now.
  void ChargeLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t TierBytesLocked(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string FormatInTierLocked(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EmitLocked(KvEventType type, const Entry& e, Tier from, RemoveReason reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Admission into `tier` (host or SSD) from above.
  bool AdmitLocked(const Entry& e, Tier tier) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes room for `bytes` more of tenant `ns` in `tier` inside its quota by demoting (or, in the SSD
  // tier, dropping) the tenant's own unpinned blocks; false if they cannot make room.
  bool MakeTenantRoomLocked(uint64_t ns, Tier tier, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Eviction class of a block (cache_policy.h): 0 over quota, 1 no quota, 2 within quota, 3 retained.
  int PriorityClassLocked(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tenant namespace a block is charged to (its own once committed, its session's while private).
  uint64_t TenantOfLocked(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecordTransfer(bool from_ssd, uint64_t bytes, absl::Duration took) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  double EtaSecondsLocked(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpirePinsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ReleasePinLocked(uint64_t pin_id, uint64_t tenant_ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DrainQuotasLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  EvictionPolicy& PolicyFor(Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return *eviction_[static_cast<int>(t)]; }

  const BlockStoreOptions options_;
  std::unique_ptr<DeviceBackend> device_;
  LayoutRegistry layouts_;
  Calibrator calibrator_;
  HostTier host_;

  mutable Mutex mu_;
  absl::flat_hash_map<BlockId, std::unique_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  // Published blocks by key. Values point into entries_ (an Entry is unpublished before it is destroyed,
  // FreeBlockLocked), which saves the lookup path a second probe per block.
  absl::flat_hash_map<BlockKey, Entry*> index_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::unique_ptr<PageArena>> arenas_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<BlockId> gpu_blocks_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<BlockId> host_blocks_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<BlockId> ssd_blocks_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<BlockId> clean_copies_ ABSL_GUARDED_BY(mu_);  // GPU-tier blocks still holding a host record
  absl::flat_hash_set<BlockId> ssd_copies_ ABSL_GUARDED_BY(mu_);    // GPU/host-tier blocks with an SSD record
  std::unique_ptr<SsdTier> ssd_;
  absl::flat_hash_map<SessionId, absl::flat_hash_map<BlockId, int32_t>> pins_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<SessionId, absl::flat_hash_set<BlockId>> owned_ ABSL_GUARDED_BY(mu_);
  uint64_t gpu_limit_ ABSL_GUARDED_BY(mu_);
  uint64_t gpu_used_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
  StoreStats counters_ ABSL_GUARDED_BY(mu_);
  MoveLatencies latencies_;  // atomics: recorded outside the lock
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // SSD resizes (SetLimits, block_store_moves.cc) run one at a time; while a shrink runs, no new SSD
  // record is written (demotions and Flush wait in BeginSsdWriteLocked), so the room it made for the
  // records of the removed slabs is still there when they move.
  bool ssd_resizing_ ABSL_GUARDED_BY(mu_) = false;
  bool ssd_writes_held_ ABSL_GUARDED_BY(mu_) = false;
  int ssd_writes_in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // SSD Puts running with the table lock released
  std::function<void()> ssd_shrink_hook_ ABSL_GUARDED_BY(mu_);
  void BeginSsdWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndSsdWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ShrinkSsdLocked(uint64_t ssd_tier_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees the blocks (or forgets the SSD copies) whose records the SSD tier dropped itself.
  void ForgetDroppedSsdRecordsLocked(std::span<const BlockKey> dropped, RemoveReason reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The mover sleeps on its own condition variable, not on mu_'s: waiting on mu_ would wake it (and have
  // it take the table lock) at every unlock of every request. Lock order: mu_, then mover_mu_.
  void KickMover();
  std::mutex mover_mu_;
  std::condition_variable mover_cv_;
  bool mover_kick_ = false;  // guarded by mover_mu_
  bool mover_stop_ = false;  // guarded by mover_mu_

  // Cache policy state (block_store_policy.cc).
  struct RetentionPin {
    uint64_t tenant_ns = 0;
    bool hard = false;
    absl::Time expires;
    std::vector<BlockId> blocks;
    std::array<uint64_t, 4> bytes{};  // hard pins: bytes held per tier when pinned (quota)
  };
  std::unique_ptr<KvEventLog> events_;
  std::array<std::unique_ptr<EvictionPolicy>, 4> eviction_ ABSL_GUARDED_BY(mu_);  // by Tier value
  absl::flat_hash_map<uint64_t, TenantUsage> tenants_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<SessionId, uint64_t> session_ns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, RetentionPin> retention_pins_ ABSL_GUARDED_BY(mu_);
  uint64_t next_pin_id_ ABSL_GUARDED_BY(mu_) = 1;
  PolicyStats policy_counters_ ABSL_GUARDED_BY(mu_);
  double h2g_bw_ ABSL_GUARDED_BY(mu_) = 0, ssd_bw_ ABSL_GUARDED_BY(mu_) = 0;
  mutable absl::flat_hash_map<std::pair<uint64_t, int>, std::string> format_names_ ABSL_GUARDED_BY(mu_);

  std::thread mover_;
};

}  // namespace kvtier
