// HostTier: byte-bounded memory for offload-format block records (data followed by parameters). On a
// GPU machine records come from pinned memory (so DMA reaches them); on the host device from plain
// 4 KiB-aligned memory (aligned so the SSD tier can write them with O_DIRECT).
//
// Thread-safety: Allocate and record destruction may happen on any thread; accounting is atomic.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>

namespace kvtier {

class HostAllocator {
 public:
  virtual ~HostAllocator() = default;
  // Returns `bytes` of memory aligned to 4 KiB, or null.
  virtual uint8_t* Allocate(uint64_t bytes) = 0;
  virtual void Free(uint8_t* p, uint64_t bytes) = 0;
};

std::unique_ptr<HostAllocator> MakeAlignedHostAllocator();

class HostTier;

// One record's memory; returns its bytes to the tier when destroyed.
class HostRecord {
 public:
  ~HostRecord();
  HostRecord(const HostRecord&) = delete;
  HostRecord& operator=(const HostRecord&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  uint64_t checksum = 0;  // xxh3-64 of the record, set by the writer

 private:
  friend class HostTier;
  HostRecord(HostTier* tier, uint8_t* data, uint64_t size) : tier_(tier), data_(data), size_(size) {}
  HostTier* tier_;
  uint8_t* data_;
  uint64_t size_;
};

class HostTier {
 public:
  HostTier(uint64_t capacity_bytes, std::unique_ptr<HostAllocator> allocator);

  // A record of `bytes`, or null when the tier lacks room (or memory could not be had). Records must not
  // outlive the tier.
  std::unique_ptr<HostRecord> Allocate(uint64_t bytes);

  uint64_t capacity() const { return capacity_.load(); }
  uint64_t used() const { return used_.load(); }
  bool HasRoom(uint64_t bytes) const { return used_.load() + bytes <= capacity_.load(); }
  void set_capacity(uint64_t bytes) { capacity_ = bytes; }

 private:
  friend class HostRecord;
  void Release(uint8_t* data, uint64_t bytes);

  std::atomic<uint64_t> capacity_;
  std::atomic<uint64_t> used_{0};
  std::unique_ptr<HostAllocator> allocator_;
};

// xxh3-64 of a byte range (the host tier's record checksum).
uint64_t RecordChecksum(const uint8_t* data, uint64_t size);

// RecordChecksum of each record (data, size), out[i] for records[i]; large batches are split over up to
// `max_threads` threads (one XXH3 thread does ~10-15 GB/s: the records of a 32K-token prompt are GiBs).
void RecordChecksums(std::span<const std::pair<const uint8_t*, uint64_t>> records, std::span<uint64_t> out,
                     int max_threads);

}  // namespace kvtier
