// SsdTier's read side: Get, GetInto and PayloadBytes, over ReadExtents (ssd_tier_io.cc).
//
// A record is read as two pieces: header + metadata into a small buffer, and the stored payload either
// into the string Get returns or, for GetInto, straight into the caller's buffer. Nothing is handed out
// before the record checksum over both pieces has verified; a record that fails is dropped and counted.
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "tiering/ssd/record_codec.h"
#include "tiering/ssd/ssd_tier_internal.h"

namespace kvtier {

namespace f = ssd_format;

std::vector<SsdTier::ReadOutcome> SsdTier::ReadRecords(std::span<const BlockKey> keys,
                                                       std::span<const std::span<uint8_t>> dests) {
  const absl::Time deadline = absl::Now() + options_.io_timeout;
  const bool external = !dests.empty();
  std::vector<ReadOutcome> out(keys.size());
  counters_->gets.fetch_add(keys.size());
  std::vector<size_t> which;
  std::vector<Resident> found;  // holds the extents: they cannot be reused while we read them
  {
    ssd::ReaderMutexLock lock(&mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = map_.find(keys[i]);
      if (it == map_.end()) continue;
      if (external && dests[i].size() < it->second.entry.raw_length) {
        out[i].status = absl::InvalidArgumentError(
            absl::StrFormat("buffer of %d bytes for a payload of %d", dests[i].size(), it->second.entry.raw_length));
        continue;
      }
      which.push_back(i);
      found.push_back(it->second);
    }
  }
  std::vector<ReadJob> jobs;
  for (size_t n = 0; n < which.size(); ++n) {
    const IndexEntry& e = found[n].entry;
    const uint64_t split = f::kHeaderSize + e.metadata_length;
    // An uncompressed payload is read into the caller's buffer directly; a compressed one is read into
    // our own and decompressed into the caller's.
    uint8_t* dest = external && e.codec == f::RecordCodec::kNone ? dests[which[n]].data() : nullptr;
    jobs.push_back(ReadJob{found[n].lease, e.extent.length, split, split + e.stored_length, dest});
  }
  std::vector<ReadResult> reads = ReadExtents(jobs, deadline);

  std::vector<char> corrupt(which.size(), 0);
  workers_->ParallelFor(which.size(), [&](size_t n) {
    const size_t i = which[n];
    ReadOutcome& o = out[i];
    if (!reads[n].status.ok()) {
      o.status = reads[n].status;
      return;
    }
    const std::string& head = reads[n].head;
    const std::span<const uint8_t> body =
        jobs[n].body_dest != nullptr
            ? std::span<const uint8_t>(jobs[n].body_dest, found[n].entry.stored_length)
            : std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(reads[n].body.data()), reads[n].body.size());
    absl::StatusOr<RecordHeader> h =
        VerifyRecordParts(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(head.data()), head.size()), body);
    const IndexEntry& e = found[n].entry;
    if (h.ok() && (h->key != keys[i] || h->record_checksum != e.checksum || h->stored_length != e.stored_length ||
                   h->raw_length != e.raw_length || h->metadata_length != e.metadata_length || h->codec != e.codec)) {
      h = absl::DataLossError("ssd record does not match its index entry");
    }
    if (!h.ok()) {
      o.status = absl::DataLossError(absl::StrFormat("ssd record %s: %s", keys[i].ToHex(), h.status().message()));
      corrupt[n] = 1;
      return;
    }
    o.metadata = head.substr(f::kHeaderSize, h->metadata_length);
    o.payload_bytes = h->raw_length;
    absl::Status decoded = absl::OkStatus();
    const std::string_view stored(reinterpret_cast<const char*>(body.data()), body.size());
    if (h->codec == f::RecordCodec::kZstd) {
      if (external) {
        decoded = PayloadCodec::DecompressInto(stored, dests[i].first(h->raw_length));
      } else {
        absl::StatusOr<std::string> raw = PayloadCodec::Decompress(stored, h->raw_length);
        decoded = raw.status();
        if (raw.ok()) o.payload = *std::move(raw);
      }
    } else if (!external) {
      o.payload = std::move(reads[n].body);  // no copy: the read buffer is the payload
    }
    if (!decoded.ok()) {  // checksummed bytes that do not decode were written corrupt: never serve them
      o.status = decoded;
      corrupt[n] = 1;
      return;
    }
    o.status = absl::OkStatus();
  });
  for (size_t n = 0; n < which.size(); ++n) {
    if (corrupt[n]) {
      counters_->checksum_failures.fetch_add(1);
      Log(absl::StrFormat("ssd_corrupt_record key=%s slab=%d offset=%d action=drop", keys[which[n]].ToHex(),
                          found[n].entry.extent.slab, found[n].entry.extent.offset));
      DropCorrupt(keys[which[n]], found[n].lease.get());
    } else if (out[which[n]].status.ok()) {
      counters_->hits.fetch_add(1);
    }
  }
  return out;
}

std::vector<absl::StatusOr<SsdRecord>> SsdTier::Get(std::span<const BlockKey> keys) {
  std::vector<ReadOutcome> outcomes = ReadRecords(keys, {});
  std::vector<absl::StatusOr<SsdRecord>> results;
  results.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!outcomes[i].status.ok()) {
      results.push_back(outcomes[i].status);
    } else {
      results.push_back(SsdRecord{keys[i], std::move(outcomes[i].metadata), std::move(outcomes[i].payload)});
    }
  }
  return results;
}

std::vector<absl::StatusOr<SsdTier::ReadInfo>> SsdTier::GetInto(std::span<const BlockKey> keys,
                                                                std::span<const std::span<uint8_t>> payloads) {
  if (payloads.size() != keys.size()) {
    return std::vector<absl::StatusOr<ReadInfo>>(
        keys.size(), absl::InvalidArgumentError("GetInto needs one payload buffer per key"));
  }
  std::vector<ReadOutcome> outcomes = ReadRecords(keys, payloads);
  std::vector<absl::StatusOr<ReadInfo>> results;
  results.reserve(keys.size());
  for (ReadOutcome& o : outcomes) {
    if (!o.status.ok()) {
      results.push_back(o.status);
    } else {
      results.push_back(ReadInfo{std::move(o.metadata), o.payload_bytes});
    }
  }
  return results;
}

absl::StatusOr<uint32_t> SsdTier::PayloadBytes(const BlockKey& key) const {
  ssd::ReaderMutexLock lock(&mu_);
  auto it = map_.find(key);
  if (it == map_.end()) return absl::NotFoundError("not in the ssd tier");
  return it->second.entry.raw_length;
}

}  // namespace kvtier
