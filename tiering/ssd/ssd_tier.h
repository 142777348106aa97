// SsdTier: the lowest tier of kvtier. Stores offload-format block records (a caller's opaque metadata
// blob plus payload bytes, keyed by BlockKey) in preallocated slab files on local disk, and survives
// kill -9: a reopened tier serves exactly the records whose Put was acknowledged and not removed since,
// each verified by its checksum.
//
// Data path. Records are written with O_DIRECT through io_uring (registered buffers, queue_depth ops in
// flight), a batch's records laid out back to back so the disk sees large sequential writes; reads go
// the same way. Each record is self-describing (record_format.h) and carries an XXH3-128 checksum over
// its header, metadata and payload; a record that fails it is never served: it is dropped from the
// index, counted and reported as DATA_LOSS. Payloads may be zstd-compressed when that pays
// (payload_codec.h), in parallel on a small worker pool.
//
// Crash consistency. The index (RocksDB, ssd_index.h) is written only after the records it names are
// written (all writes completed; with SsdDurability::kPowerLoss also fdatasync'ed, and the WAL synced). A crash
// therefore leaves at worst records without index entries (orphans): the free-space map is rebuilt from
// the index at Open, so orphan space is simply free again. Open also re-reads every indexed record's
// header (or, with RecoveryCheck::kFull, the whole record) and drops entries that do not verify, which
// covers the one remaining hazard: a Remove whose index delete was lost in the crash, whose space was
// already being rewritten.
//
// Failure behaviour. Every I/O has a deadline (io_timeout): a Get on a stuck disk returns
// DEADLINE_EXCEEDED (the record stays indexed, it is just unavailable now); buffers and space held by
// the stuck I/O are released only if and when the kernel completes it. A write that fails (EIO, ENOSPC,
// short or timed out) fails only its own records (RESOURCE_EXHAUSTED for no space, UNAVAILABLE for I/O
// errors, DEADLINE_EXCEEDED): they are counted as dropped and nothing previously acknowledged is touched.
// A full tier refuses Puts with RESOURCE_EXHAUSTED; choosing what to evict is the caller's policy
// (BlockStore evicts prefix-tree leaves first), so SsdTier never drops a record on its own except a
// corrupt one, or one that no longer fits after SetCapacity shrinks the tier.
//
// Thread-safety: every public method may be called concurrently from any thread. Put and Get of
// different batches run their I/O in parallel; index commits (Put's last step, Remove, drops) are
// serialized by one mutex so that the RocksDB index and the in-memory map always agree.
//
// Threads: the caller's thread copies records into I/O buffers and waits; one io_uring reaper thread
// (or io_threads pread/pwrite threads) completes I/O and copies read buffers out; worker_threads
// helpers share zstd and checksum work with the caller. options.log may be called from any of them.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tiering/block_key.h"
#include "tiering/ssd/buffer_pool.h"
#include "tiering/ssd/extent_allocator.h"
#include "tiering/ssd/io_backend.h"
#include "tiering/ssd/mutex.h"
#include "tiering/ssd/payload_codec.h"
#include "tiering/ssd/slab_file.h"
#include "tiering/ssd/ssd_index.h"
#include "tiering/ssd/worker_pool.h"

namespace kvtier {

enum class SsdDurability : uint8_t { kProcessCrash, kPowerLoss };

struct SsdTierOptions {
  std::string dir;                       // slab files and index/ live here; created if missing
  uint64_t capacity_bytes = 1ull << 30;  // rounded down to whole slabs (at least one)
  uint64_t slab_bytes = 256ull << 20;    // per file; a multiple of 4 KiB. Fixed at first Open (stored)
  // New slab files are never preallocated into the last `min_free_fraction` of the filesystem: a
  // capacity larger than the disk has room for ends with fewer slabs (logged), not with a full disk
  // that the rest of the host (logs, the engine's own files) then fails on. Existing slabs are kept.
  double min_free_fraction = 0.05;
  int queue_depth = 16;                  // I/O ops in flight per backend
  uint32_t io_block_bytes = 1u << 20;    // largest single read/write; a multiple of 4 KiB
  int io_buffers = 0;                    // registered I/O buffers of io_block_bytes; 0: 2 * queue_depth
  SsdCompression compression = SsdCompression::kAuto;
  int zstd_level = 1;
  double min_compression_ratio = 1.1;
  int worker_threads = 1;    // compression/verification helpers (plus the calling thread)
  int io_threads = 4;        // pread/pwrite threads when io_uring is unavailable
  bool use_io_uring = true;  // false: always the pread/pwrite backend
  absl::Duration io_timeout = absl::Seconds(10);
  enum class RecoveryCheck { kHeaders, kFull };
  RecoveryCheck recovery_check = RecoveryCheck::kHeaders;
  // What an acknowledged Put survives. kProcessCrash: kill -9 of the daemon (the O_DIRECT writes have
  // completed to the device and the index's WAL is in the kernel's page cache), not a power loss or a
  // kernel crash, after which records may be missing but never wrong: reopening re-reads every indexed
  // record's header and drops the ones that do not verify, and a read verifies the whole record against
  // the index's checksum. kPowerLoss adds an fdatasync of the slabs written and a synced index commit to
  // every Put batch (two flushes of the device's write cache per batch).
  SsdDurability durability = SsdDurability::kPowerLoss;
  bool sync_removes = false;  // fsync the index on Remove (a lost remove only resurrects a
                              // valid record, so the default trades that for speed)
  // Receives one line per notable event ("ssd_fallback backend=threads reason=..."); stderr if unset.
  std::function<void(std::string_view)> log;
};

// One record to store. The views must stay valid during the Put call only.
struct SsdPutItem {
  BlockKey key;
  std::string_view metadata;  // caller-defined (layout id, parent key, codec, quantization params)
  std::string_view payload;
};

struct SsdRecord {
  BlockKey key;
  std::string metadata;
  std::string payload;  // decompressed, exactly as given to Put
};

// What ListEntries reports per record (no disk reads: it comes from the index).
struct SsdEntryInfo {
  BlockKey key;
  std::string metadata;
  uint32_t payload_bytes = 0;  // as given to Put
  uint32_t stored_bytes = 0;   // after compression
  uint64_t extent_bytes = 0;   // space used on disk
  uint64_t sequence = 0;       // write order; larger is newer
};

struct SsdCapacityChange {
  uint64_t capacity_bytes = 0;    // the new capacity (whole slabs)
  int64_t relocated = 0;          // records moved out of removed slabs
  std::vector<BlockKey> dropped;  // records that no longer fit and were removed (kKeepRecords: corrupt ones only)
  std::vector<BlockKey> kept_in_place;  // kKeepRecords: records left in slabs the shrink had to keep
  std::vector<uint64_t> kept_in_place_bytes;  // the disk space each of them holds (same order)
};

// What a shrink does with a record that finds no room in the remaining slabs.
enum class SsdShrinkMode {
  kDropWhatDoesNotFit,  // dropped and reported (SsdCapacityChange::dropped)
  // Never dropped: the slabs are drained from the highest down, and the shrink stops at the first slab
  // holding a record that cannot be moved (no room, or an I/O error), keeping it and every slab below.
  // Only records that fail verification (corrupt: unreadable anyway) are dropped. For callers that must
  // not lose a record they cannot vouch for (BlockStore: pinned blocks).
  kKeepRecords,
};

struct SsdTierStats {
  std::string backend;
  uint64_t capacity_bytes = 0, used_bytes = 0, records = 0;
  uint64_t puts = 0, gets = 0, hits = 0, removes = 0;
  uint64_t payload_bytes_written = 0, stored_bytes_written = 0, disk_bytes_written = 0, disk_bytes_read = 0;
  uint64_t compressed_records = 0;
  double compression_ratio = 1.0;  // payload / stored bytes over everything written
  uint64_t checksum_failures = 0, io_errors = 0, timeouts = 0, enospc_drops = 0;
  uint64_t write_drops = 0;      // records whose write or commit failed (I/O error, ENOSPC, timeout)
  uint64_t full_rejects = 0;     // Put items refused up front: no free extent that large
  uint64_t dropped_records = 0;  // corrupt, recovery-failed or capacity-shrink drops
  uint64_t recovered_records = 0, recovery_drops = 0;
};

// What SsdTier::Audit found. Every count but `records` and the byte totals must be zero on a quiescent
// tier (no Put, Get or Remove in flight), e.g. right after Open.
struct SsdAudit {
  uint64_t records = 0;               // entries in the in-memory index
  uint64_t record_bytes = 0;          // sum of their extents
  uint64_t allocator_used_bytes = 0;  // what the free-space map counts as used
  uint64_t leaked_bytes = 0;          // used but referenced by no entry (orphans not reclaimed)
  uint64_t overlapping = 0;           // entries whose extents overlap another's
  uint64_t index_only = 0;            // in RocksDB but not in memory (or with another extent)
  uint64_t memory_only = 0;           // in memory but not in RocksDB
  uint64_t unreadable = 0;            // full read failed (I/O error, timeout)
  uint64_t corrupt = 0;               // record does not verify or does not match its entry
  bool clean() const { return leaked_bytes + overlapping + index_only + memory_only + unreadable + corrupt == 0; }
};

class SsdTier {
 public:
  // Opens (or creates) the tier in options.dir and recovers its index. `backend` replaces the default
  // (io_uring, falling back to pread/pwrite threads with a log line when io_uring is unavailable).
  static absl::StatusOr<std::unique_ptr<SsdTier>> Open(SsdTierOptions options,
                                                       std::unique_ptr<IoBackend> backend = nullptr);
  ~SsdTier();
  SsdTier(const SsdTier&) = delete;
  SsdTier& operator=(const SsdTier&) = delete;

  // Stores the records (replacing any with the same key); one status per item, in order. OK means the
  // record is durable and indexed: it survives kill -9. Items fail independently (INVALID_ARGUMENT for
  // oversize fields, RESOURCE_EXHAUSTED when the tier or disk is full, UNAVAILABLE on I/O errors,
  // DEADLINE_EXCEEDED on a stuck disk); a failed item leaves any older record of its key untouched.
  std::vector<absl::Status> Put(std::span<const SsdPutItem> items);

  // Reads and verifies the records; one result per key, in order. NOT_FOUND when absent; DATA_LOSS when
  // the bytes on disk fail verification (the record is then dropped and counted); DEADLINE_EXCEEDED or
  // UNAVAILABLE when the disk did not deliver in time or failed.
  std::vector<absl::StatusOr<SsdRecord>> Get(std::span<const BlockKey> keys);

  // Like Get, but each payload lands in the caller's payloads[i] (e.g. pinned host-tier memory, at least
  // PayloadBytes(key) long) instead of a new string: an uncompressed payload goes from the registered
  // I/O buffers straight into it, with no allocation and no second copy. Statuses as for Get, plus
  // INVALID_ARGUMENT for a buffer that is too small. On any error payloads[i] holds unspecified bytes
  // (possibly part of a record that failed verification) and must not be used. Once GetInto has
  // returned, even with DEADLINE_EXCEEDED, the tier never writes to the buffers again.
  struct ReadInfo {
    std::string metadata;
    uint32_t payload_bytes = 0;  // bytes written to the front of the caller's buffer
  };
  std::vector<absl::StatusOr<ReadInfo>> GetInto(std::span<const BlockKey> keys,
                                                std::span<const std::span<uint8_t>> payloads);

  // Payload size of a stored record (to size GetInto buffers); NOT_FOUND when absent.
  absl::StatusOr<uint32_t> PayloadBytes(const BlockKey& key) const;

  // Removes the records (absent keys are ignored); returns how many were present. Space is reused as
  // soon as no read in flight still needs it.
  absl::StatusOr<int64_t> Remove(std::span<const BlockKey> keys);

  bool Contains(const BlockKey& key) const;

  // Every record in the index, for warm restart. Stops early when fn returns false.
  absl::Status ForEachEntry(const std::function<bool(const SsdEntryInfo&)>& fn) const;
  absl::StatusOr<std::vector<SsdEntryInfo>> ListEntries() const;

  // Grows (new slab files) or shrinks (records in removed slabs are moved into free space of the
  // remaining ones; those that do not fit are dropped and reported, or with kKeepRecords kept where they
  // are, the tier stopping above `bytes`) the tier at runtime.
  // `relocate_first`: keys whose records are moved before any other (e.g. the caller's pinned blocks),
  // so that they are the last to be dropped when the remaining slabs run out of room (kDropWhatDoesNotFit).
  absl::StatusOr<SsdCapacityChange> SetCapacity(uint64_t bytes, std::span<const BlockKey> relocate_first = {},
                                                SsdShrinkMode mode = SsdShrinkMode::kDropWhatDoesNotFit);
  // The capacity SetCapacity(bytes) aims for: whole slabs, at least one.
  uint64_t SlabRoundedCapacity(uint64_t bytes) const {
    return std::max<uint64_t>(1, bytes / slab_bytes_) * slab_bytes_;
  }

  SsdTierStats Stats() const;

  // Cross-checks the in-memory index, the RocksDB index and the free-space map, and (read_records) reads
  // and verifies every record in full. For crash-consistency tests and operators' fsck; call it on a
  // quiescent tier (ssd_tier_audit.cc).
  absl::StatusOr<SsdAudit> Audit(bool read_records);
  std::string_view backend_name() const { return backend_->name(); }
  const SsdTierOptions& options() const { return options_; }

 private:
  class ExtentLease;
  struct Resident {
    IndexEntry entry;
    std::shared_ptr<ExtentLease> lease;
  };
  // One contiguous piece of a record write: the record bytes are the concatenation of `pieces`, zero-
  // padded to the lease's extent length.
  struct WriteJob {
    std::shared_ptr<ExtentLease> lease;
    std::vector<std::string_view> pieces;
    absl::Status status;
  };
  // Reads the first `length` bytes of an extent (a 4 KiB multiple). The bytes land in two buffers:
  // [0, split) in `head` and [split, keep) in `body` (padding past `keep` is dropped), so that a Get can
  // hand the payload buffer to its caller without another copy. split == keep == length: all in head.
  // `body_dest`, if set, receives the body instead of ReadResult::body (keep - split bytes, caller-owned;
  // never written after ReadExtents returns).
  struct ReadJob {
    std::shared_ptr<ExtentLease> lease;
    uint64_t length = 0;
    uint64_t split = 0;
    uint64_t keep = 0;
    uint8_t* body_dest = nullptr;
  };
  static ReadJob WholeRead(std::shared_ptr<ExtentLease> lease, uint64_t length) {
    return ReadJob{std::move(lease), length, length, length, nullptr};
  }
  // Get and GetInto: reads, verifies and decodes; payloads go to dests[i] when dests is not empty.
  struct ReadOutcome {
    absl::Status status = absl::NotFoundError("not in the ssd tier");
    std::string metadata;
    std::string payload;  // Get only
    uint32_t payload_bytes = 0;
  };
  std::vector<ReadOutcome> ReadRecords(std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dests);
  struct ReadResult {
    absl::Status status;
    std::string head;
    std::string body;
  };
  struct Counters;

  explicit SsdTier(SsdTierOptions options);
  absl::Status Init(std::unique_ptr<IoBackend> backend);
  absl::Status Recover();
  void Log(std::string_view line) const;

  // Data-path helpers (ssd_tier_io.cc). WriteExtents writes each job and makes it durable; job.status
  // says how it went. ReadExtents reads each job's first `length` bytes.
  void WriteExtents(std::span<WriteJob> jobs, absl::Time deadline);
  std::vector<ReadResult> ReadExtents(std::span<const ReadJob> jobs, absl::Time deadline);

  // Space: a lease owns an allocated extent (and a reference to its slab file) and frees the extent when
  // the last holder (index map, a reader, an I/O in flight) lets go.
  std::shared_ptr<ExtentLease> AllocateLease(uint64_t bytes, uint32_t exclude_from = UINT32_MAX);
  std::shared_ptr<ExtentLease> ClaimLease(const Extent& e);  // recovery: mark an indexed extent used
  void FreeExtent(const Extent& e, uint64_t epoch);
  // False once the lease's slab has been removed (capacity shrink) since the lease was made.
  bool LeaseIsLive(const ExtentLease& lease) const;
  absl::Status AddSlabs(uint32_t count);

  // Drops `key` if it still maps to `lease` (a corrupt record found by a reader).
  void DropCorrupt(const BlockKey& key, const ExtentLease* lease);

  const SsdTierOptions options_;
  uint64_t slab_bytes_ = 0;
  std::unique_ptr<SsdIndex> index_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<PayloadCodec> codec_;
  std::unique_ptr<Counters> counters_;
  std::atomic<uint64_t> next_sequence_{1};

  // Space. Lock order: commit_mu_, then mu_, then alloc_mu_.
  mutable ssd::Mutex alloc_mu_;
  ExtentAllocator allocator_ ABSL_GUARDED_BY(alloc_mu_);
  std::map<uint32_t, std::shared_ptr<SlabFile>> slabs_ ABSL_GUARDED_BY(alloc_mu_);
  std::map<uint32_t, uint64_t> slab_epochs_ ABSL_GUARDED_BY(alloc_mu_);
  uint64_t next_epoch_ ABSL_GUARDED_BY(alloc_mu_) = 1;
  uint32_t alloc_limit_ ABSL_GUARDED_BY(alloc_mu_) = UINT32_MAX;  // slabs >= this are being drained

  // The in-memory index: what Get and Contains consult.
  mutable ssd::Mutex mu_;
  absl::flat_hash_map<BlockKey, Resident> map_ ABSL_GUARDED_BY(mu_);

  // Serializes index commits (RocksDB write + map update) so the two never disagree.
  ssd::Mutex commit_mu_ ABSL_ACQUIRED_BEFORE(mu_);

  // Destroyed first (declared last): completing or dropping the I/O still in flight releases buffers
  // and leases into the members above.
  std::unique_ptr<BufferPool> buffers_;
  std::unique_ptr<IoBackend> backend_;
};

}  // namespace kvtier
