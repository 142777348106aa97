// BlockStore: the SSD tier — host -> SSD demotion, SSD -> host promotion, and warm restart.
//
// An SSD record's payload is the block's host record verbatim (offload page data, then its parameter
// record); its metadata is the page-table entry the block needs to be served again after a restart
// (layout id, parent key, tenant namespace, record size and the record's own xxh3-64 checksum, checked
// end to end when the block comes back, on top of the SSD tier's checksum of what it stored).
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "tiering/block_store.h"
#include "tiering/log.h"

namespace kvtier {
namespace {

constexpr uint32_t kMetaMagic = 0x4b56544d;  // "KVTM"
constexpr uint32_t kMetaVersion = 2;  // 2: + scale_set_id (version 1 records, without it, are still read)

struct SsdMeta {
  uint64_t layout_id = 0;
  BlockKey parent;
  uint64_t ns = 0;
  uint64_t record_bytes = 0;
  uint64_t record_checksum = 0;
  uint64_t scale_set_id = 0;  // static scale set of the offload copy (docs/calibration.md); 0: none
};

void Put64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t Get64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::string EncodeMeta(const SsdMeta& m) {
  std::string s;
  Put64(s, (uint64_t{kMetaVersion} << 32) | kMetaMagic);
  for (uint64_t v : {m.layout_id, m.parent.lo, m.parent.hi, m.ns, m.record_bytes, m.record_checksum, m.scale_set_id})
    Put64(s, v);
  return s;
}

bool DecodeMeta(std::string_view s, SsdMeta* m) {
  const bool v1 = s.size() == 56 && Get64(s.data()) == ((uint64_t{1} << 32) | kMetaMagic);
  const bool v2 = s.size() == 64 && Get64(s.data()) == ((uint64_t{kMetaVersion} << 32) | kMetaMagic);
  if (!v1 && !v2) return false;
  m->scale_set_id = v2 ? Get64(s.data() + 56) : 0;
  m->layout_id = Get64(s.data() + 8);
  m->parent = {Get64(s.data() + 16), Get64(s.data() + 24)};
  m->ns = Get64(s.data() + 32);
  m->record_bytes = Get64(s.data() + 40);
  m->record_checksum = Get64(s.data() + 48);
  return m->layout_id != 0 && m->record_bytes != 0;
}

}  // namespace

const Layout* BlockStore::ResolveLayoutLocked(Entry& e) {
  if (e.layout == nullptr) {
    const Layout* l = layouts_.Find(e.layout_id);
    const uint64_t set = l != nullptr && l->static_plan ? l->static_plan->set->id : 0;
    if (l != nullptr && l->offload_record_bytes(e.parent.IsZero()) == e.record_bytes && set == e.scale_set_id)
      e.layout = l;
  }
  return e.layout;
}

std::string BlockStore::SsdMetadataLocked(const Entry& e) const {
  return EncodeMeta({e.layout_id, e.parent, e.ns, e.record_bytes, e.record_checksum, e.scale_set_id});
}

void BlockStore::ForgetSsdCopyLocked(Entry& e) {
  e.ssd_copy = false;
  ssd_copies_.erase(e.id);
}

void BlockStore::MakeSsdRoomLocked(uint64_t bytes, bool may_drop) {
  SsdTierStats st = ssd_->Stats();
  while (st.used_bytes + bytes > st.capacity_bytes) {
    std::vector<Entry*> v = may_drop ? PickVictimsLocked(Tier::kSsd, 32) : std::vector<Entry*>{};
    std::vector<BlockKey> keys;
    if (v.empty()) {
      // SSD copies of blocks that live above: dropping one loses nothing (least recently used first;
      // not one that is moving: a demotion in flight may be about to rely on it).
      std::vector<Entry*> copies;
      for (BlockId id : ssd_copies_)
        if (Entry* e = FindLocked(id); e != nullptr && !e->moving) copies.push_back(e);
      if (copies.empty()) return;
      std::sort(copies.begin(), copies.end(), [](const Entry* a, const Entry* b) { return a->last_use < b->last_use; });
      if (copies.size() > 32) copies.resize(32);
      for (Entry* e : copies) {
        keys.push_back(e->key);
        ForgetSsdCopyLocked(*e);
      }
    } else {
      for (Entry* e : v) FreeBlockLocked(*e, /*dropped=*/true, &keys);
    }
    (void)ssd_->Remove(keys);  // one index batch for the whole group
    st = ssd_->Stats();
  }
}

EvictOutcome BlockStore::DemoteToSsdLocked(std::vector<Entry*> victims, bool may_drop) {
  EvictOutcome outcome;
  if (victims.empty() || ssd_ == nullptr) return outcome;
  // Admission and the tenants' SSD quotas first: what they refuse is dropped, not written.
  std::vector<Entry*> admitted;
  for (Entry* e : victims) {
    // Blocks that already have an SSD copy (Flush) were admitted when it was written; Drain (!may_drop)
    // never drops, so admission does not apply to it.
    if (may_drop && !e->ssd_copy && !AdmitLocked(*e, Tier::kSsd)) {
      FreeBlockLocked(*e, /*dropped=*/true, nullptr, RemoveReason::kAdmission);
      ++outcome.dropped;
    } else {
      admitted.push_back(e);
    }
  }
  victims = std::move(admitted);
  for (Entry* e : victims) e->moving = true;  // before the lock is released below
  {
    std::vector<Entry*> fits;
    for (Entry* e : victims) {
      if (MakeTenantRoomLocked(e->ns, Tier::kSsd, e->record_bytes)) {
        fits.push_back(e);
      } else if (e->pins == 0 && may_drop) {
        e->moving = false;
        FreeBlockLocked(*e, /*dropped=*/true, nullptr, RemoveReason::kQuota);
        ++outcome.dropped;
      } else {
        e->moving = false;  // pinned meanwhile, or a drain: stays in host memory
      }
    }
    victims = std::move(fits);
  }
  if (victims.empty()) return outcome;
  // Waits out an SSD shrink (the victims are marked moving: nothing frees them meanwhile) before making
  // room, so that the room is made in the tier as it will be.
  BeginSsdWriteLocked();
  uint64_t bytes = 0;
  for (Entry* e : victims)
    if (!e->ssd_copy) bytes += e->record_bytes;
  MakeSsdRoomLocked(bytes, may_drop);
  // Victims with an SSD copy (Flush) are already there: only the others are written.
  std::vector<std::string> metas;
  std::vector<SsdPutItem> items;
  std::vector<size_t> item_of(victims.size(), SIZE_MAX);
  for (size_t i = 0; i < victims.size(); ++i)
    if (!victims[i]->ssd_copy) {
      item_of[i] = metas.size();
      metas.push_back(SsdMetadataLocked(*victims[i]));
    }
  for (size_t i = 0; i < victims.size(); ++i) {
    Entry* e = victims[i];
    if (item_of[i] == SIZE_MAX) continue;
    items.push_back({e->key, metas[item_of[i]],
                     std::string_view(reinterpret_cast<const char*>(e->host->data()), e->record_bytes)});
  }
  std::vector<absl::Status> put;
  if (!items.empty()) {
    mu_.Unlock();
    const absl::Time started = absl::Now();
    put = ssd_->Put(items);
    latencies_.ssd_write.Record(absl::Now() - started);
    mu_.Lock();
  }
  EndSsdWriteLocked();
  std::vector<BlockKey> undo;
  for (size_t i = 0; i < victims.size(); ++i) {
    Entry& e = *victims[i];
    e.moving = false;
    if (item_of[i] == SIZE_MAX && !e.ssd_copy) continue;  // its copy was dropped meanwhile: stays in host
    const absl::Status written = item_of[i] == SIZE_MAX ? absl::OkStatus() : put[item_of[i]];
    if (!written.ok()) {
      ++counters_.ssd_write_failures;
      KVTIER_LOG(kWarning, "ssd_write_failed") << "block=" << e.id << " error=\"" << written << "\"";
      if (e.pins == 0 && may_drop) {  // nothing acknowledged is lost: this block was only ever in our memory
        FreeBlockLocked(e, /*dropped=*/true, nullptr, RemoveReason::kWriteFailed);
        ++outcome.dropped;
      }
      continue;
    }
    if (e.pins > 0) {  // pinned meanwhile: stays in host memory; tiers are exclusive
      if (item_of[i] != SIZE_MAX) undo.push_back(e.key);  // (an SSD copy made by Flush stays)
      continue;
    }
    if (e.ssd_copy) e.record_checksum = e.ssd_copy_checksum;  // the copy is now the block itself
    ForgetSsdCopyLocked(e);
    e.host.reset();
    e.tier = Tier::kSsd;
    host_blocks_.erase(e.id);
    ssd_blocks_.insert(e.id);
    ++counters_.ssd_writes;
    ++outcome.moved;
    OnMovedLocked(e, Tier::kHost, /*evicted=*/true);
  }
  if (!undo.empty()) (void)ssd_->Remove(undo);
  return outcome;
}

absl::flat_hash_set<BlockId> BlockStore::PromoteFromSsdLocked(std::vector<Entry*> blocks,
                                                              std::vector<Entry*>* deferred) {
  absl::flat_hash_set<BlockId> failed;
  if (blocks.empty()) return failed;
  uint64_t bytes = 0;
  for (Entry* e : blocks) {
    e->moving = true;
    bytes += e->record_bytes;
  }
  MakeHostRoomLocked(bytes);
  std::vector<Entry*> reading;
  std::vector<std::unique_ptr<HostRecord>> records;
  std::vector<BlockKey> keys;
  for (Entry* e : blocks) {
    std::unique_ptr<HostRecord> r =
        MakeTenantRoomLocked(e->ns, Tier::kHost, e->record_bytes) ? host_.Allocate(e->record_bytes) : nullptr;
    if (r == nullptr) {
      e->moving = false;
      deferred->push_back(e);
      continue;
    }
    reading.push_back(e);
    records.push_back(std::move(r));
    keys.push_back(e->key);
  }
  if (reading.empty()) return failed;
  mu_.Unlock();
  const absl::Time started = absl::Now();
  // Straight into the host records (no intermediate copy), then verified end to end outside the lock.
  std::vector<std::span<uint8_t>> dests;
  for (auto& r : records) dests.emplace_back(r->data(), r->size());
  const std::vector<absl::StatusOr<SsdTier::ReadInfo>> got = ssd_->GetInto(keys, dests);
  std::vector<absl::Status> verdict(reading.size());
  for (size_t i = 0; i < reading.size(); ++i) {
    if (!got[i].ok()) {
      verdict[i] = got[i].status();
    } else if (got[i]->payload_bytes != records[i]->size()) {
      verdict[i] = absl::DataLossError("SSD record has the wrong size");
    } else {
      records[i]->checksum = RecordChecksum(records[i]->data(), records[i]->size());
      if (records[i]->checksum != reading[i]->record_checksum)
        verdict[i] = absl::DataLossError("SSD record does not match its page-table checksum");
    }
  }
  const absl::Duration took = absl::Now() - started;
  latencies_.ssd_read.Record(took);
  mu_.Lock();
  {
    uint64_t read_bytes = 0;
    for (const auto& r : records) read_bytes += r->size();
    RecordTransfer(/*from_ssd=*/true, read_bytes, took);
  }
  std::vector<BlockKey> promoted;
  for (size_t i = 0; i < reading.size(); ++i) {
    Entry& e = *reading[i];
    e.moving = false;
    if (!verdict[i].ok()) {
      ++counters_.ssd_read_failures;
      failed.insert(e.id);
      KVTIER_LOG(kError, "ssd_read_failed") << "block=" << e.id << " error=\"" << verdict[i] << "\"";
      if (verdict[i].code() == absl::StatusCode::kDataLoss) {  // corrupt: dropped, never served
        ++counters_.checksum_failures;
        FreeBlockLocked(e, /*dropped=*/true, nullptr, RemoveReason::kCorrupt);
      }
      continue;
    }
    e.host = std::move(records[i]);
    e.tier = Tier::kHost;
    ssd_blocks_.erase(e.id);
    host_blocks_.insert(e.id);
    promoted.push_back(e.key);
    ++counters_.ssd_reads;
    OnMovedLocked(e, Tier::kSsd, /*evicted=*/false);
  }
  if (!promoted.empty()) (void)ssd_->Remove(promoted);  // tiers are exclusive
  return failed;
}

void BlockStore::RestoreFromSsd() {
  MutexLock lock(&mu_);
  int64_t bad = 0;
  const absl::Status st = ssd_->ForEachEntry([&](const SsdEntryInfo& info) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    SsdMeta m;
    if (!DecodeMeta(info.metadata, &m) || index_.contains(info.key)) {
      ++bad;
      return true;
    }
    auto e = std::make_unique<Entry>();
    e->id = next_id_++;
    e->layout_id = m.layout_id;
    e->key = info.key;
    e->parent = m.parent;
    e->ns = m.ns;
    e->committed = true;
    e->tier = Tier::kSsd;
    e->record_bytes = m.record_bytes;
    e->record_checksum = m.record_checksum;
    e->scale_set_id = m.scale_set_id;
    e->last_use = info.sequence;  // older writes are older uses
    index_.emplace(e->key, e.get());
    ssd_blocks_.insert(e->id);
    e->uses = 1;
    PolicyFor(Tier::kSsd).OnInsert({e->id, e->key, e->record_bytes, 1.0});
    ChargeLocked(*e);
    EmitLocked(KvEventType::kStored, *e, Tier::kSsd, RemoveReason::kEvicted);
    entries_.emplace(e->id, std::move(e));
    ++counters_.ssd_restored;
    return true;
  });
  for (auto& [id, e] : entries_)
    if (!e->parent.IsZero())
      if (auto it = index_.find(e->parent); it != index_.end()) ++it->second->children;
  clock_ = 0;
  for (auto& [id, e] : entries_) clock_ = std::max(clock_, e->last_use);
  absl::flat_hash_set<uint64_t> sets;  // static scale sets the restored blocks need (docs/calibration.md)
  for (auto& [id, e] : entries_)
    if (e->scale_set_id != 0) sets.insert(e->scale_set_id);
  std::string set_list;
  for (uint64_t s : sets) absl::StrAppend(&set_list, set_list.empty() ? "" : ",", absl::Hex(s, absl::kZeroPad16));
  KVTIER_LOG(kInfo, "ssd_restore") << "blocks=" << counters_.ssd_restored << " unreadable_metadata=" << bad
                                   << " static_scale_sets=\"" << set_list << "\""
                                   << " status=\"" << st << "\"";
}

}  // namespace kvtier
