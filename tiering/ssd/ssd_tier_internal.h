// Private pieces of SsdTier shared by its implementation files (ssd_tier.cc, ssd_tier_io.cc,
// ssd_tier_capacity.cc). Not part of the API.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "tiering/ssd/ssd_tier.h"

namespace kvtier {

// Owns one allocated extent and a reference to its slab file; frees the extent when the last holder
// lets go. Holders: the in-memory index entry, readers in flight, and the IoBatch of any write that
// timed out (so that a late write can never land in space already given to another record).
class SsdTier::ExtentLease {
 public:
  ExtentLease(SsdTier* tier, const Extent& extent, uint64_t epoch, std::shared_ptr<SlabFile> file)
      : tier_(tier), extent_(extent), epoch_(epoch), file_(std::move(file)) {}
  ~ExtentLease() { tier_->FreeExtent(extent_, epoch_); }
  ExtentLease(const ExtentLease&) = delete;
  ExtentLease& operator=(const ExtentLease&) = delete;

  const Extent& extent() const { return extent_; }
  uint64_t epoch() const { return epoch_; }
  const std::shared_ptr<SlabFile>& file() const { return file_; }

 private:
  SsdTier* const tier_;
  const Extent extent_;
  const uint64_t epoch_;  // the slab incarnation the extent belongs to (see FreeExtent)
  const std::shared_ptr<SlabFile> file_;
};

struct SsdTier::Counters {
  std::atomic<uint64_t> puts{0}, gets{0}, hits{0}, removes{0};
  std::atomic<uint64_t> payload_bytes_written{0}, stored_bytes_written{0}, disk_bytes_written{0};
  std::atomic<uint64_t> disk_bytes_read{0}, compressed_records{0};
  std::atomic<uint64_t> checksum_failures{0}, io_errors{0}, timeouts{0}, enospc_drops{0};
  std::atomic<uint64_t> write_drops{0}, full_rejects{0}, dropped_records{0};
  std::atomic<uint64_t> recovered_records{0}, recovery_drops{0};
};

// Maps a negative errno from a completed op to the status a caller sees.
absl::Status IoErrorStatus(int64_t neg_errno, std::string_view what);

}  // namespace kvtier
