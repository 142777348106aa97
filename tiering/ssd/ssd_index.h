// SsdIndex: the SSD tier's persistent index in RocksDB: BlockKey -> where the record lives and what it
// is (IndexEntry) plus the caller's metadata blob, so that a restarted daemon can list the tier without
// reading the slab files.
//
// Keys are the 16-byte BlockKey::ToBytes() form; values are EncodeIndexValue() below (format in
// docs/ssd_format.md). A few non-16-byte keys hold tier settings ("config/slab_bytes").
//
// Durability: Apply(..., sync=true) returns after the RocksDB WAL is fsynced. The tier calls it only
// after the records it names are durable on disk, which is the whole crash-consistency argument: an
// entry never names bytes that a crash can still take away.
//
// Thread-safety: all methods may be called concurrently (RocksDB is thread-safe).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "rocksdb/db.h"
#include "tiering/block_key.h"
#include "tiering/ssd/extent_allocator.h"
#include "tiering/ssd/record_codec.h"

namespace kvtier {

struct IndexEntry {
  Extent extent;  // slab, offset, padded length
  uint32_t metadata_length = 0;
  uint32_t stored_length = 0;
  uint32_t raw_length = 0;
  ssd_format::RecordCodec codec = ssd_format::RecordCodec::kNone;
  uint64_t sequence = 0;
  Checksum128 checksum;  // the record checksum, as in the record header
};

std::string EncodeIndexValue(const IndexEntry& e, std::string_view metadata);
// False when `value` is malformed; *metadata points into `value`.
bool DecodeIndexValue(std::string_view value, IndexEntry* e, std::string_view* metadata);

class SsdIndex {
 public:
  struct Put {
    BlockKey key;
    IndexEntry entry;
    std::string_view metadata;
  };

  static absl::StatusOr<std::unique_ptr<SsdIndex>> Open(const std::string& path);

  // Writes all puts and deletes atomically (one RocksDB WriteBatch). `sync`: fsync the WAL first.
  absl::Status Apply(std::span<const Put> puts, std::span<const BlockKey> deletes, bool sync);

  // Calls fn for every entry in key order; stops early when fn returns false. Malformed values are
  // reported to `bad` (which may delete them) instead.
  absl::Status ForEach(const std::function<bool(const BlockKey&, const IndexEntry&, std::string_view)>& fn,
                       const std::function<void(std::string_view raw_key)>& bad = nullptr) const;

  // Raw key deletion (for malformed entries found by ForEach).
  absl::Status DeleteRaw(std::string_view raw_key, bool sync);

  // A tier setting, or nullopt-like empty string when absent.
  absl::StatusOr<std::string> GetSetting(std::string_view name) const;
  absl::Status SetSetting(std::string_view name, std::string_view value);

 private:
  explicit SsdIndex(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace kvtier
