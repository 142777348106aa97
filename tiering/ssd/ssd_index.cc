#include "tiering/ssd/ssd_index.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace kvtier {
namespace {

constexpr uint8_t kIndexValueVersion = 1;
// version u8, slab u32, offset u64, length u64, metadata_length u32, stored_length u32, raw_length u32,
// codec u8, sequence u64, checksum 16 B, then the metadata.
constexpr size_t kFixedValueBytes = 1 + 4 + 8 + 8 + 4 + 4 + 4 + 1 + 8 + 16;

template <typename T>
void Append(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <typename T>
T Take(const char*& p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  p += sizeof(T);
  return v;
}

absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat(std::string(what), ": ", s.ToString());
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  return absl::UnavailableError(msg);
}

rocksdb::Slice ToSlice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }

std::string SettingKey(std::string_view name) { return absl::StrCat("config/", std::string(name)); }

}  // namespace

std::string EncodeIndexValue(const IndexEntry& e, std::string_view metadata) {
  std::string v;
  v.reserve(kFixedValueBytes + metadata.size());
  Append<uint8_t>(&v, kIndexValueVersion);
  Append<uint32_t>(&v, e.extent.slab);
  Append<uint64_t>(&v, e.extent.offset);
  Append<uint64_t>(&v, e.extent.length);
  Append<uint32_t>(&v, e.metadata_length);
  Append<uint32_t>(&v, e.stored_length);
  Append<uint32_t>(&v, e.raw_length);
  Append<uint8_t>(&v, static_cast<uint8_t>(e.codec));
  Append<uint64_t>(&v, e.sequence);
  Append<uint64_t>(&v, e.checksum.lo);
  Append<uint64_t>(&v, e.checksum.hi);
  v.append(metadata);
  return v;
}

bool DecodeIndexValue(std::string_view value, IndexEntry* e, std::string_view* metadata) {
  if (value.size() < kFixedValueBytes) return false;
  const char* p = value.data();
  if (Take<uint8_t>(p) != kIndexValueVersion) return false;
  e->extent.slab = Take<uint32_t>(p);
  e->extent.offset = Take<uint64_t>(p);
  e->extent.length = Take<uint64_t>(p);
  e->metadata_length = Take<uint32_t>(p);
  e->stored_length = Take<uint32_t>(p);
  e->raw_length = Take<uint32_t>(p);
  const uint8_t codec = Take<uint8_t>(p);
  if (codec > static_cast<uint8_t>(ssd_format::RecordCodec::kZstd)) return false;
  e->codec = static_cast<ssd_format::RecordCodec>(codec);
  e->sequence = Take<uint64_t>(p);
  e->checksum.lo = Take<uint64_t>(p);
  e->checksum.hi = Take<uint64_t>(p);
  if (value.size() - kFixedValueBytes != e->metadata_length) return false;
  if (e->extent.length != ssd_format::RecordExtentBytes(e->metadata_length, e->stored_length)) return false;
  *metadata = value.substr(kFixedValueBytes);
  return true;
}

absl::StatusOr<std::unique_ptr<SsdIndex>> SsdIndex::Open(const std::string& path) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  options.max_background_jobs = 1;  // a small index; keep the daemon's cores for serving
  options.write_buffer_size = 8 << 20;
  options.keep_log_file_num = 2;
  options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, path, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("open index ", path));
  return std::unique_ptr<SsdIndex>(new SsdIndex(std::unique_ptr<rocksdb::DB>(raw)));
}

absl::Status SsdIndex::Apply(std::span<const Put> puts, std::span<const BlockKey> deletes, bool sync) {
  rocksdb::WriteBatch batch;
  for (const BlockKey& k : deletes) batch.Delete(ToSlice(k.ToBytes()));
  for (const Put& p : puts) batch.Put(ToSlice(p.key.ToBytes()), ToSlice(EncodeIndexValue(p.entry, p.metadata)));
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(db_->Write(wo, &batch), "index write");
}

absl::Status SsdIndex::ForEach(const std::function<bool(const BlockKey&, const IndexEntry&, std::string_view)>& fn,
                               const std::function<void(std::string_view raw_key)>& bad) const {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const std::string_view k(it->key().data(), it->key().size());
    if (k.size() != 16) continue;  // a setting
    BlockKey key;
    IndexEntry e;
    std::string_view metadata;
    if (!BlockKey::FromBytes(k, &key) ||
        !DecodeIndexValue(std::string_view(it->value().data(), it->value().size()), &e, &metadata)) {
      if (bad) bad(k);
      continue;
    }
    if (!fn(key, e, metadata)) break;
  }
  return FromRocks(it->status(), "index scan");
}

absl::Status SsdIndex::DeleteRaw(std::string_view raw_key, bool sync) {
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(db_->Delete(wo, ToSlice(raw_key)), "index delete");
}

absl::StatusOr<std::string> SsdIndex::GetSetting(std::string_view name) const {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), ToSlice(SettingKey(name)), &v);
  if (s.IsNotFound()) return std::string();
  if (!s.ok()) return FromRocks(s, "index get setting");
  return v;
}

absl::Status SsdIndex::SetSetting(std::string_view name, std::string_view value) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(db_->Put(wo, ToSlice(SettingKey(name)), ToSlice(value)), "index set setting");
}

}  // namespace kvtier
