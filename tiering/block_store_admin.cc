// BlockStore: operator-facing operations — Flush (copies down, durably), Drain (empties a tier without
// dropping anything) — and the key-based promotion behind Prefetch.
//
// Flush gives a committed block a copy in a lower tier while the block stays where it is: committed
// blocks never change, so a copy stays valid for the block's whole life. A host-tier copy of a GPU block
// is its clean copy (see block_store.h); an SSD copy is a normal SSD record (same metadata as a demoted
// block, so a restarted daemon serves it) that the entry marks `ssd_copy`. A later demotion of a block
// with an SSD copy writes nothing; freeing the block removes its copy; the SSD tier sheds copies first
// when it needs room (that loses nothing: the block lives above).
#include <algorithm>
#include <thread>

#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "tiering/block_store.h"
#include "tiering/log.h"

namespace kvtier {
namespace {

// Blocks per Flush round: bounds the host memory a round may hold outside the host tier's budget.
constexpr size_t kFlushBatch = 32;

}  // namespace

absl::StatusOr<FlushOutcome> BlockStore::Flush(Tier to) {
  if (to != Tier::kSsd && to != Tier::kHost)
    return absl::InvalidArgumentError("Flush copies to the host or the SSD tier");
  if (to == Tier::kSsd && ssd_ == nullptr)
    return absl::FailedPreconditionError("no SSD tier is configured (ssd_dir): nothing can be made durable");
  FlushOutcome out;
  MutexLock lock(&mu_);
  // The blocks to copy, by id (blocks may come and go while the lock is released below).
  std::vector<BlockId> todo;
  for (const auto& [id, e] : entries_) {
    if (!e->committed) continue;
    const bool has_copy = to == Tier::kSsd ? (e->tier == Tier::kSsd || e->ssd_copy)
                                           : (e->tier != Tier::kGpu || e->host != nullptr);
    if (has_copy) {
      ++out.already_copied;
    } else {
      todo.push_back(id);
    }
  }
  for (size_t next = 0; next < todo.size(); next += kFlushBatch) {
    std::vector<Entry*> batch;
    for (size_t i = next; i < std::min(todo.size(), next + kFlushBatch); ++i)
      if (Entry* e = FindLocked(todo[i])) batch.push_back(e);
    (void)WaitNotMoving(batch);  // entries are looked up again: one may have been dropped meanwhile
    batch.clear();
    for (size_t i = next; i < std::min(todo.size(), next + kFlushBatch); ++i) {
      Entry* e = FindLocked(todo[i]);
      if (e == nullptr) continue;  // freed meanwhile: nothing left to copy
      const bool has_copy = to == Tier::kSsd ? (e->tier == Tier::kSsd || e->ssd_copy)
                                             : (e->tier != Tier::kGpu || e->host != nullptr);
      if (has_copy) {
        ++out.already_copied;
        continue;
      }
      if (e->layout == nullptr) {  // restored from SSD, layout not registered yet: it is on SSD anyway
        ++out.already_copied;
        continue;
      }
      e->moving = true;  // claimed: no mover, release or drop touches it until we are done
      batch.push_back(e);
    }
    if (batch.empty()) continue;

    // 1. GPU blocks without an offload record get one (quantized like a page-out; the block stays).
    //    The record is a clean copy when the host tier has room; otherwise (SSD flush only) a scratch
    //    record outside the tier's budget that lives until its SSD write is done.
    std::vector<std::unique_ptr<HostRecord>> scratch_records;
    std::vector<std::string> scratch(batch.size());
    std::vector<const uint8_t*> record(batch.size(), nullptr);
    std::vector<uint64_t> record_checksum(batch.size(), 0);
    absl::flat_hash_map<std::pair<const Layout*, bool>, std::vector<size_t>> to_convert;
    std::vector<std::unique_ptr<HostRecord>> new_records(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      Entry* e = batch[i];
      if (e->host != nullptr) {
        record[i] = e->host->data();
        record_checksum[i] = e->host->checksum;
        continue;
      }
      const uint64_t bytes = e->layout->offload_record_bytes(e->parent.IsZero());
      new_records[i] = host_.Allocate(bytes);
      if (new_records[i] == nullptr && to == Tier::kHost) continue;  // no room: not copied
      if (new_records[i] == nullptr) scratch[i].assign(bytes, '\0');
      to_convert[{e->layout, e->parent.IsZero()}].push_back(i);
    }
    std::vector<bool> converted(batch.size(), false);
    for (auto& [geometry, idx] : to_convert) {
      const Layout& layout = *geometry.first;
      PageArena* arena = ArenaLocked(layout);
      std::vector<int32_t> slots;
      std::vector<uint8_t*> dst;
      for (size_t i : idx) {
        slots.push_back(batch[i]->slot);
        dst.push_back(new_records[i] ? new_records[i]->data() : reinterpret_cast<uint8_t*>(scratch[i].data()));
      }
      mu_.Unlock();
      const absl::Time started = absl::Now();
      const absl::Status st = device_->PageOut(layout, layout.offload_for(geometry.second), *arena, slots, dst);
      latencies_.page_out.Record(absl::Now() - started);
      std::vector<uint64_t> sums;
      if (st.ok())
        for (size_t k = 0; k < idx.size(); ++k)
          sums.push_back(RecordChecksum(dst[k], layout.offload_record_bytes(geometry.second)));
      mu_.Lock();
      if (!st.ok()) {
        KVTIER_LOG(kError, "flush_convert_failed") << "blocks=" << idx.size() << " error=\"" << st << "\"";
        continue;
      }
      for (size_t k = 0; k < idx.size(); ++k) {
        const size_t i = idx[k];
        Entry& e = *batch[i];
        converted[i] = true;
        record_checksum[i] = sums[k];
        e.record_bytes = layout.offload_record_bytes(geometry.second);
        e.record_checksum = sums[k];
        if (new_records[i] != nullptr) {  // keep it as the block's clean copy
          new_records[i]->checksum = sums[k];
          e.host = std::move(new_records[i]);
          clean_copies_.insert(e.id);
          record[i] = e.host->data();
        } else {
          record[i] = reinterpret_cast<const uint8_t*>(scratch[i].data());
        }
      }
    }
    if (to == Tier::kHost) {
      for (size_t i = 0; i < batch.size(); ++i) {
        batch[i]->moving = false;
        if (converted[i]) {
          ++out.written;
        } else {
          ++out.not_written;
        }
      }
      continue;
    }

    // 2. SSD: one Put for the batch, into free space only (Flush never evicts).
    std::vector<std::string> metas;
    std::vector<SsdPutItem> items;
    std::vector<size_t> item_block;
    for (size_t i = 0; i < batch.size(); ++i)
      if (record[i] != nullptr) metas.push_back(SsdMetadataLocked(*batch[i]));
    for (size_t i = 0, m = 0; i < batch.size(); ++i) {
      if (record[i] == nullptr) continue;
      items.push_back({batch[i]->key, metas[m++],
                       std::string_view(reinterpret_cast<const char*>(record[i]), batch[i]->record_bytes)});
      item_block.push_back(i);
    }
    std::vector<absl::Status> put;
    if (!items.empty()) {
      BeginSsdWriteLocked();  // waits out an SSD shrink (the batch is marked moving)
      mu_.Unlock();
      const absl::Time started = absl::Now();
      put = ssd_->Put(items);
      latencies_.ssd_write.Record(absl::Now() - started);
      mu_.Lock();
      EndSsdWriteLocked();
    }
    std::vector<bool> written(batch.size(), false);
    for (size_t k = 0; k < item_block.size(); ++k) {
      if (put[k].ok()) {
        written[item_block[k]] = true;
      } else {
        ++counters_.ssd_write_failures;
        KVTIER_LOG(kWarning, "flush_write_failed") << "block=" << batch[item_block[k]]->id << " error=\"" << put[k]
                                                   << "\"";
      }
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      Entry& e = *batch[i];
      e.moving = false;
      if (!written[i]) {
        ++out.not_written;
        continue;
      }
      e.ssd_copy = true;
      e.ssd_copy_checksum = record_checksum[i];
      ssd_copies_.insert(e.id);
      ++out.written;
    }
  }
  KVTIER_LOG(kInfo, "flush") << "to=" << TierName(to) << " written=" << out.written
                             << " already=" << out.already_copied << " not_written=" << out.not_written;
  return out;
}

absl::StatusOr<DrainOutcome> BlockStore::Drain(Tier tier, absl::Duration wait) {
  if (tier != Tier::kGpu && tier != Tier::kHost)
    return absl::InvalidArgumentError("Drain empties the GPU or the host tier");
  if (tier == Tier::kHost && ssd_ == nullptr)
    return absl::FailedPreconditionError("no SSD tier is configured: the host tier has nowhere to drain to");
  const absl::Time deadline = absl::Now() + wait;
  DrainOutcome out;
  MutexLock lock(&mu_);
  while (true) {
    // Move everything movable now; stop when a round makes no progress (pinned, or no room below).
    while (true) {
      std::vector<Entry*> v = PickVictimsLocked(tier, 256);
      if (v.empty()) break;
      const EvictOutcome o =
          tier == Tier::kGpu ? PageOutLocked(std::move(v), /*may_drop=*/false) : DemoteToSsdLocked(std::move(v), false);
      out.moved += o.moved;
      if (o.dropped != 0)
        KVTIER_LOG(kError, "drain_dropped") << "blocks=" << o.dropped;  // never expected: may_drop is false
      if (o.moved == 0) break;
    }
    if (tier == Tier::kHost) {  // clean copies are host memory too; freeing them loses nothing
      for (BlockId id : std::vector<BlockId>(clean_copies_.begin(), clean_copies_.end()))
        if (Entry* e = FindLocked(id); e != nullptr && !e->moving) {
          e->host.reset();
          clean_copies_.erase(id);
        }
    }
    const auto& set = tier == Tier::kGpu ? gpu_blocks_ : host_blocks_;
    out.remaining = static_cast<int64_t>(set.size());
    out.pinned = out.private_blocks = 0;
    bool movable_left = false;
    for (BlockId id : set) {
      const Entry* e = FindLocked(id);
      if (!e->committed) {
        ++out.private_blocks;
      } else if (e->pins > 0) {
        ++out.pinned;
      } else {
        movable_left = true;
      }
    }
    // Done when empty, out of time, or when what is left is stuck for want of room below (waiting
    // would not help) rather than held by pins.
    if (out.remaining == 0 || absl::Now() >= deadline || (movable_left && out.pinned == 0)) break;
    mu_.Unlock();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    mu_.Lock();
  }
  KVTIER_LOG(kInfo, "drain") << "tier=" << TierName(tier) << " moved=" << out.moved << " remaining=" << out.remaining
                             << " pinned=" << out.pinned << " private=" << out.private_blocks;
  return out;
}

absl::StatusOr<PoolExport> BlockStore::ExportPool(uint64_t layout_id) {
  const Layout* layout = layouts_.Find(layout_id);
  if (layout == nullptr) return absl::NotFoundError(absl::StrCat("unknown layout_id=", layout_id));
  MutexLock lock(&mu_);
  PageArena* arena = ArenaLocked(*layout);
  if (arena == nullptr) return absl::ResourceExhaustedError("GPU pool arena could not be created");
  auto e = device_->ExportPool(*arena);
  if (!e.ok()) return e.status();
  e->num_slots = arena->num_slots();
  e->page_bytes = arena->page_bytes();
  e->param_bytes = arena->param_bytes();
  return e;
}

absl::StatusOr<LookupOutcome> BlockStore::PinAndPromote(SessionId session, std::string_view tenant_salt,
                                                        uint64_t layout_id, std::span<const BlockKey> keys,
                                                        bool keep_pins) {
  const Layout* layout = layouts_.Find(layout_id);
  if (layout == nullptr) return absl::NotFoundError(absl::StrCat("unknown layout_id=", layout_id));
  const uint64_t ns = XXH3_64bits(tenant_salt.data(), tenant_salt.size()) | 1;
  MutexLock lock(&mu_);
  std::vector<BlockId> ids;
  for (const BlockKey& k : keys) {
    auto it = index_.find(k);
    if (it == index_.end()) break;
    Entry* e = it->second;
    // Another tenant's (or layout's) block is as good as absent: the prefix ends here.
    if (e->ns != ns || e->layout_id != layout_id) break;
    Pin(session, *e);
    ids.push_back(e->id);
  }
  const size_t keep = PromotePinnedLocked(session, ids);
  LookupOutcome out;
  for (size_t i = 0; i < keep; ++i) {
    Entry* e = FindLocked(ids[i]);
    Touch(*e);
    out.blocks.push_back({e->key, e->id, e->tier, e->slot});
    if (!keep_pins) Unpin(session, *e);
  }
  out.matched_tokens = static_cast<int32_t>(keep) * layout->shape.block_size;
  return out;
}

}  // namespace kvtier
