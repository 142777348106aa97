#include "tiering/host_tier.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdlib>
#include <thread>
#include <vector>

namespace kvtier {
namespace {

constexpr uint64_t kAlign = 4096;
uint64_t RoundUp(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

class AlignedHostAllocator final : public HostAllocator {
 public:
  uint8_t* Allocate(uint64_t bytes) override {
    return static_cast<uint8_t*>(std::aligned_alloc(kAlign, RoundUp(bytes)));
  }
  void Free(uint8_t* p, uint64_t) override { std::free(p); }
};

}  // namespace

std::unique_ptr<HostAllocator> MakeAlignedHostAllocator() { return std::make_unique<AlignedHostAllocator>(); }

HostRecord::~HostRecord() { tier_->Release(data_, size_); }

HostTier::HostTier(uint64_t capacity_bytes, std::unique_ptr<HostAllocator> allocator)
    : capacity_(capacity_bytes), allocator_(std::move(allocator)) {}

std::unique_ptr<HostRecord> HostTier::Allocate(uint64_t bytes) {
  uint64_t used = used_.load();
  do {
    if (used + bytes > capacity_.load()) return nullptr;
  } while (!used_.compare_exchange_weak(used, used + bytes));
  uint8_t* p = allocator_->Allocate(bytes);
  if (p == nullptr) {
    used_ -= bytes;
    return nullptr;
  }
  return std::unique_ptr<HostRecord>(new HostRecord(this, p, bytes));
}

void HostTier::Release(uint8_t* data, uint64_t bytes) {
  allocator_->Free(data, bytes);
  used_ -= bytes;
}

uint64_t RecordChecksum(const uint8_t* data, uint64_t size) { return XXH3_64bits(data, size); }

void RecordChecksums(std::span<const std::pair<const uint8_t*, uint64_t>> records, std::span<uint64_t> out,
                     int max_threads) {
  uint64_t bytes = 0;
  for (const auto& [data, size] : records) bytes += size;
  constexpr uint64_t kBytesPerThread = 64ull << 20;  // below this a thread costs more than it saves
  const auto threads = static_cast<size_t>(
      std::clamp<uint64_t>(bytes / kBytesPerThread, 1, static_cast<uint64_t>(std::max(max_threads, 1))));
  auto run = [&](size_t part) {
    for (size_t i = part; i < records.size(); i += threads) out[i] = RecordChecksum(records[i].first, records[i].second);
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(run, t);
  run(0);
  for (std::thread& t : pool) t.join();
}

}  // namespace kvtier
