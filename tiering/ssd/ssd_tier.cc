// SsdTier: opening, recovery, space leases, the index-only operations and stats. The data paths are in
// ssd_tier_io.cc, capacity changes in ssd_tier_capacity.cc.
#include "tiering/ssd/ssd_tier.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tiering/ssd/record_codec.h"
#include "tiering/ssd/ssd_tier_internal.h"
#include "tiering/ssd/thread_io_backend.h"
#include "tiering/ssd/uring_io_backend.h"

namespace kvtier {

namespace f = ssd_format;

namespace {

// Recovery reads headers in slices so that each slice, not the whole index, gets one io_timeout.
constexpr size_t kRecoverySlice = 256;

absl::Status ValidateOptions(const SsdTierOptions& o) {
  if (o.dir.empty()) return absl::InvalidArgumentError("ssd tier: dir is empty");
  if (o.slab_bytes == 0 || o.slab_bytes % f::kBlockSize != 0) {
    return absl::InvalidArgumentError("ssd tier: slab_bytes must be a non-zero multiple of 4096");
  }
  if (o.io_block_bytes == 0 || o.io_block_bytes % f::kBlockSize != 0) {
    return absl::InvalidArgumentError("ssd tier: io_block_bytes must be a non-zero multiple of 4096");
  }
  if (o.queue_depth < 1 || o.queue_depth > 4096) return absl::InvalidArgumentError("ssd tier: queue_depth 1..4096");
  if (!(o.min_free_fraction >= 0 && o.min_free_fraction <= 0.9))
    return absl::InvalidArgumentError("ssd tier: min_free_fraction outside [0, 0.9]");
  if (o.io_buffers < 0 || o.worker_threads < 0 || o.io_threads < 0) {
    return absl::InvalidArgumentError("ssd tier: negative thread or buffer count");
  }
  if (o.io_timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("ssd tier: io_timeout must be > 0");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SsdTier>> SsdTier::Open(SsdTierOptions options, std::unique_ptr<IoBackend> backend) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  std::unique_ptr<SsdTier> tier(new SsdTier(std::move(options)));
  if (absl::Status s = tier->Init(std::move(backend)); !s.ok()) return s;
  return tier;
}

SsdTier::SsdTier(SsdTierOptions options) : options_(std::move(options)), counters_(std::make_unique<Counters>()) {}

SsdTier::~SsdTier() {
  // I/O still in flight completes (or is dropped) now, while the pool, allocator and slabs it releases
  // into are alive.
  backend_.reset();
  ssd::MutexLock lock(&mu_);
  map_.clear();
}

void SsdTier::Log(std::string_view line) const {
  if (options_.log) {
    options_.log(line);
  } else {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  }
}

absl::Status SsdTier::Init(std::unique_ptr<IoBackend> backend) {
  std::error_code ec;
  std::filesystem::create_directories(options_.dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("ssd tier: create ", options_.dir, ": ", ec.message()));

  absl::StatusOr<std::unique_ptr<SsdIndex>> index = SsdIndex::Open(options_.dir + "/index");
  if (!index.ok()) return index.status();
  index_ = *std::move(index);

  // The slab size is a property of the files on disk: the first Open fixes it.
  absl::StatusOr<std::string> stored = index_->GetSetting("slab_bytes");
  if (!stored.ok()) return stored.status();
  slab_bytes_ = options_.slab_bytes;
  if (stored->empty()) {
    if (absl::Status s = index_->SetSetting("slab_bytes", absl::StrCat(slab_bytes_)); !s.ok()) return s;
  } else if (!absl::SimpleAtoi(*stored, &slab_bytes_) || slab_bytes_ == 0 || slab_bytes_ % f::kBlockSize != 0) {
    return absl::DataLossError(absl::StrCat("ssd tier: bad stored slab_bytes '", *stored, "'"));
  } else if (slab_bytes_ != options_.slab_bytes) {
    Log(absl::StrFormat("ssd_slab_size_kept stored=%d requested=%d", slab_bytes_, options_.slab_bytes));
  }

  workers_ = std::make_unique<WorkerPool>(options_.worker_threads);
  codec_ = std::make_unique<PayloadCodec>(options_.compression, options_.zstd_level, options_.min_compression_ratio,
                                          workers_.get());
  const int num_buffers = options_.io_buffers > 0 ? options_.io_buffers : 2 * options_.queue_depth;
  absl::StatusOr<std::unique_ptr<BufferPool>> pool = BufferPool::Create(num_buffers, options_.io_block_bytes);
  if (!pool.ok()) return pool.status();
  buffers_ = *std::move(pool);

  if (backend != nullptr) {
    backend_ = std::move(backend);
  } else if (options_.use_io_uring) {
    absl::StatusOr<std::unique_ptr<UringIoBackend>> uring = UringIoBackend::Create(options_.queue_depth);
    if (uring.ok()) {
      backend_ = *std::move(uring);
    } else {
      Log(absl::StrFormat("ssd_io_fallback backend=threads reason=\"%s\"", uring.status().message()));
    }
  }
  if (backend_ == nullptr) {
    backend_ = std::make_unique<ThreadIoBackend>(std::max(1, options_.io_threads), options_.queue_depth);
  }
  if (absl::Status s = backend_->RegisterBuffers(buffers_->iovecs()); !s.ok()) {
    Log(absl::StrFormat("ssd_fixed_buffers_unavailable backend=%s reason=\"%s\"", backend_->name(), s.message()));
  }

  const uint32_t want = static_cast<uint32_t>(std::max<uint64_t>(1, options_.capacity_bytes / slab_bytes_));
  if (absl::Status s = AddSlabs(want); !s.ok()) {
    ssd::MutexLock lock(&alloc_mu_);
    if (slabs_.empty()) return s;
    Log(absl::StrFormat("ssd_capacity_reduced slabs=%d wanted=%d reason=\"%s\"", slabs_.size(), want, s.message()));
  }
  if (absl::Status s = Recover(); !s.ok()) return s;

  // Slab files beyond the capacity (a smaller capacity than last time): their records were dropped by
  // Recover as out of range; the files go.
  uint32_t have = 0;
  {
    ssd::MutexLock lock(&alloc_mu_);
    have = static_cast<uint32_t>(slabs_.size());
  }
  for (const auto& entry : std::filesystem::directory_iterator(options_.dir, ec)) {
    uint32_t id = 0;
    if (SlabFile::ParseFileName(entry.path().filename().string(), &id) && id >= have) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
  Log(absl::StrFormat("ssd_open dir=%s backend=%s slabs=%d capacity=%d records=%d dropped=%d", options_.dir,
                      backend_->name(), have, have * slab_bytes_, counters_->recovered_records.load(),
                      counters_->recovery_drops.load()));
  return absl::OkStatus();
}

namespace {

// OK when a new file of `bytes` still leaves `min_free_fraction` of the filesystem of `dir` free.
absl::Status CheckFreeSpace(const std::string& dir, uint64_t bytes, double min_free_fraction) {
  struct statvfs fs{};
  if (::statvfs(dir.c_str(), &fs) != 0) return absl::OkStatus();  // unknown: the preallocation will tell
  const long double total = static_cast<long double>(fs.f_blocks) * fs.f_frsize;
  const long double avail = static_cast<long double>(fs.f_bavail) * fs.f_frsize;
  const long double reserve = total * min_free_fraction;
  if (avail >= static_cast<long double>(bytes) + reserve) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "a %d-byte slab would leave less than %.1f%% of the filesystem of %s free (%.0f bytes available of %.0f)",
      bytes, 100.0 * min_free_fraction, dir, static_cast<double>(avail), static_cast<double>(total)));
}

}  // namespace

absl::Status SsdTier::AddSlabs(uint32_t count) {
  ssd::MutexLock lock(&alloc_mu_);
  for (uint32_t id = static_cast<uint32_t>(slabs_.size()); id < count; ++id) {
    const std::string path = options_.dir + "/" + SlabFile::FileName(id);
    std::error_code ec;
    const bool exists = std::filesystem::file_size(path, ec) >= slab_bytes_ && !ec;  // already allocated
    if (!exists) {
      if (absl::Status s = CheckFreeSpace(options_.dir, slab_bytes_, options_.min_free_fraction); !s.ok()) return s;
    }
    absl::StatusOr<std::shared_ptr<SlabFile>> file = SlabFile::Open(path, id, slab_bytes_);
    if (!file.ok()) return file.status();
    if (!(*file)->direct()) Log(absl::StrFormat("ssd_no_odirect file=%s", (*file)->path()));
    slabs_[id] = *std::move(file);
    allocator_.AddSlab(id, slab_bytes_);
    slab_epochs_[id] = next_epoch_++;
  }
  alloc_limit_ = UINT32_MAX;
  return absl::OkStatus();
}

std::shared_ptr<SsdTier::ExtentLease> SsdTier::AllocateLease(uint64_t bytes, uint32_t exclude_from) {
  ssd::MutexLock lock(&alloc_mu_);
  std::optional<Extent> e = allocator_.Allocate(bytes, std::min(exclude_from, alloc_limit_));
  if (!e) return nullptr;
  return std::make_shared<ExtentLease>(this, *e, slab_epochs_.at(e->slab), slabs_.at(e->slab));
}

std::shared_ptr<SsdTier::ExtentLease> SsdTier::ClaimLease(const Extent& e) {
  ssd::MutexLock lock(&alloc_mu_);
  if (e.offset % f::kBlockSize != 0 || e.length % f::kBlockSize != 0 || !slabs_.contains(e.slab) ||
      !allocator_.MarkUsed(e)) {
    return nullptr;
  }
  return std::make_shared<ExtentLease>(this, e, slab_epochs_.at(e.slab), slabs_.at(e.slab));
}

void SsdTier::FreeExtent(const Extent& e, uint64_t epoch) {
  ssd::MutexLock lock(&alloc_mu_);
  auto it = slab_epochs_.find(e.slab);
  if (it == slab_epochs_.end() || it->second != epoch) return;  // that slab was removed (and maybe re-added)
  allocator_.Free(e);
}

bool SsdTier::LeaseIsLive(const ExtentLease& lease) const {
  ssd::MutexLock lock(&alloc_mu_);
  auto it = slab_epochs_.find(lease.extent().slab);
  return it != slab_epochs_.end() && it->second == lease.epoch();
}

absl::Status SsdTier::Recover() {
  struct Candidate {
    BlockKey key;
    IndexEntry entry;
  };
  std::vector<Candidate> candidates;
  std::vector<std::string> malformed;
  absl::Status scan = index_->ForEach(
      [&](const BlockKey& key, const IndexEntry& e, std::string_view) {
        candidates.push_back(Candidate{key, e});
        return true;
      },
      [&](std::string_view raw) { malformed.emplace_back(raw); });
  if (!scan.ok()) return scan;

  // Newest first: when two entries claim overlapping space (a remove lost in a crash, its space already
  // rewritten), the newer one gets it and the older one fails to claim and is dropped.
  std::sort(candidates.begin(), candidates.end(),
            [](const Candidate& a, const Candidate& b) { return a.entry.sequence > b.entry.sequence; });
  std::vector<BlockKey> drop;
  std::vector<Resident> claimed;
  std::vector<BlockKey> claimed_keys;
  for (const Candidate& c : candidates) {
    std::shared_ptr<ExtentLease> lease = ClaimLease(c.entry.extent);
    if (!lease) {
      drop.push_back(c.key);
      continue;
    }
    claimed.push_back(Resident{c.entry, std::move(lease)});
    claimed_keys.push_back(c.key);
  }

  // Verify what each entry points at: the header block, or the whole record.
  const bool full = options_.recovery_check == SsdTierOptions::RecoveryCheck::kFull;
  std::vector<char> keep(claimed.size(), 1);
  for (size_t begin = 0; begin < claimed.size(); begin += kRecoverySlice) {
    const size_t end = std::min(claimed.size(), begin + kRecoverySlice);
    std::vector<ReadJob> jobs;
    for (size_t i = begin; i < end; ++i) {
      const Extent& x = claimed[i].entry.extent;
      jobs.push_back(WholeRead(claimed[i].lease, full ? x.length : std::min<uint64_t>(x.length, f::kBlockSize)));
    }
    std::vector<ReadResult> reads = ReadExtents(jobs, absl::Now() + options_.io_timeout);
    workers_->ParallelFor(jobs.size(), [&](size_t n) {
      const size_t i = begin + n;
      if (!reads[n].status.ok()) return;  // unreadable now: kept, Get verifies before serving
      const auto* p = reinterpret_cast<const uint8_t*>(reads[n].head.data());
      const std::span<const uint8_t> bytes(p, reads[n].head.size());
      absl::StatusOr<RecordHeader> h = full ? VerifyRecord(bytes) : DecodeRecordHeader(bytes);
      const IndexEntry& e = claimed[i].entry;
      keep[i] = h.ok() && h->key == claimed_keys[i] && h->record_checksum == e.checksum &&
                h->metadata_length == e.metadata_length && h->stored_length == e.stored_length &&
                h->raw_length == e.raw_length && h->codec == e.codec;
    });
  }

  uint64_t max_sequence = 0;
  {
    ssd::MutexLock lock(&mu_);
    for (size_t i = 0; i < claimed.size(); ++i) {
      if (!keep[i]) {
        drop.push_back(claimed_keys[i]);
        continue;
      }
      max_sequence = std::max(max_sequence, claimed[i].entry.sequence);
      map_[claimed_keys[i]] = std::move(claimed[i]);
    }
    counters_->recovered_records.store(map_.size());
  }
  claimed.clear();  // the leases of dropped entries free their space here
  next_sequence_.store(max_sequence + 1);
  counters_->recovery_drops.store(drop.size() + malformed.size());
  counters_->dropped_records.fetch_add(drop.size() + malformed.size());
  for (const BlockKey& k : drop) Log(absl::StrFormat("ssd_recovery_drop key=%s", k.ToHex()));
  for (const std::string& raw : malformed) {
    if (absl::Status s = index_->DeleteRaw(raw, false); !s.ok()) return s;
  }
  return drop.empty() && malformed.empty() ? absl::OkStatus() : index_->Apply({}, drop, /*sync=*/true);
}

void SsdTier::DropCorrupt(const BlockKey& key, const ExtentLease* lease) {
  Resident gone;
  ssd::MutexLock commit(&commit_mu_);
  {
    ssd::MutexLock lock(&mu_);
    auto it = map_.find(key);
    if (it == map_.end() || it->second.lease.get() != lease) return;  // already replaced or removed
    gone = std::move(it->second);
    map_.erase(it);
  }
  counters_->dropped_records.fetch_add(1);
  const BlockKey keys[] = {key};
  if (absl::Status s = index_->Apply({}, keys, /*sync=*/false); !s.ok()) {
    // The next Open re-verifies the entry and drops it then.
    Log(absl::StrFormat("ssd_index_delete_failed key=%s error=\"%s\"", key.ToHex(), s.message()));
  }
}

absl::StatusOr<int64_t> SsdTier::Remove(std::span<const BlockKey> keys) {
  std::vector<Resident> gone;  // released after the locks
  ssd::MutexLock commit(&commit_mu_);
  std::vector<BlockKey> present;
  {
    ssd::ReaderMutexLock lock(&mu_);
    for (const BlockKey& k : keys) {
      if (map_.contains(k)) present.push_back(k);
    }
  }
  if (present.empty()) return 0;
  if (absl::Status s = index_->Apply({}, present, options_.sync_removes); !s.ok()) return s;
  ssd::MutexLock lock(&mu_);
  for (const BlockKey& k : present) {
    auto it = map_.find(k);
    if (it == map_.end()) continue;  // duplicate key in `keys`
    gone.push_back(std::move(it->second));
    map_.erase(it);
  }
  counters_->removes.fetch_add(gone.size());
  return static_cast<int64_t>(gone.size());
}

bool SsdTier::Contains(const BlockKey& key) const {
  ssd::ReaderMutexLock lock(&mu_);
  return map_.contains(key);
}

absl::Status SsdTier::ForEachEntry(const std::function<bool(const SsdEntryInfo&)>& fn) const {
  return index_->ForEach([&](const BlockKey& key, const IndexEntry& e, std::string_view metadata) {
    SsdEntryInfo info;
    info.key = key;
    info.metadata.assign(metadata);
    info.payload_bytes = e.raw_length;
    info.stored_bytes = e.stored_length;
    info.extent_bytes = e.extent.length;
    info.sequence = e.sequence;
    return fn(info);
  });
}

absl::StatusOr<std::vector<SsdEntryInfo>> SsdTier::ListEntries() const {
  std::vector<SsdEntryInfo> out;
  absl::Status s = ForEachEntry([&](const SsdEntryInfo& e) {
    out.push_back(e);
    return true;
  });
  if (!s.ok()) return s;
  return out;
}

SsdTierStats SsdTier::Stats() const {
  SsdTierStats s;
  s.backend = std::string(backend_->name());
  {
    ssd::MutexLock lock(&alloc_mu_);
    s.capacity_bytes = allocator_.capacity_bytes();
    s.used_bytes = allocator_.used_bytes();
  }
  {
    ssd::ReaderMutexLock lock(&mu_);
    s.records = map_.size();
  }
  const Counters& c = *counters_;
  s.puts = c.puts.load();
  s.gets = c.gets.load();
  s.hits = c.hits.load();
  s.removes = c.removes.load();
  s.payload_bytes_written = c.payload_bytes_written.load();
  s.stored_bytes_written = c.stored_bytes_written.load();
  s.disk_bytes_written = c.disk_bytes_written.load();
  s.disk_bytes_read = c.disk_bytes_read.load();
  s.compressed_records = c.compressed_records.load();
  s.compression_ratio = s.stored_bytes_written == 0 ? 1.0
                                                    : static_cast<double>(s.payload_bytes_written) /
                                                          static_cast<double>(s.stored_bytes_written);
  s.checksum_failures = c.checksum_failures.load();
  s.io_errors = c.io_errors.load();
  s.timeouts = c.timeouts.load();
  s.enospc_drops = c.enospc_drops.load();
  s.write_drops = c.write_drops.load();
  s.full_rejects = c.full_rejects.load();
  s.dropped_records = c.dropped_records.load();
  s.recovered_records = c.recovered_records.load();
  s.recovery_drops = c.recovery_drops.load();
  return s;
}

}  // namespace kvtier
