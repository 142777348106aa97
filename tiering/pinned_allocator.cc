#include "tiering/pinned_allocator.h"

#include <cuda_runtime_api.h>

#include <vector>

#include "absl/container/flat_hash_map.h"
#include "tiering/cuda_call.h"
#include "tiering/sync.h"

namespace kvtier {
namespace {

constexpr uint64_t kRecordAlign = 4096;  // the HostAllocator contract (O_DIRECT writes of records)

uint64_t RoundUp(uint64_t x, uint64_t m) { return (x + m - 1) / m * m; }

// One cudaHostAlloc'd range, freed with cudaFreeHost.
class PinnedSlab {
 public:
  static absl::StatusOr<std::unique_ptr<PinnedSlab>> Create(uint64_t bytes) {
    void* p = nullptr;
    KVTIER_RETURN_IF_CUDA_ERROR(cudaHostAlloc(&p, bytes, cudaHostAllocPortable));
    return std::unique_ptr<PinnedSlab>(new PinnedSlab(static_cast<uint8_t*>(p), bytes));
  }
  ~PinnedSlab() { IgnoreCudaError(cudaFreeHost(data_)); }
  PinnedSlab(const PinnedSlab&) = delete;
  PinnedSlab& operator=(const PinnedSlab&) = delete;
  uint8_t* data() const { return data_; }
  uint64_t bytes() const { return bytes_; }

 private:
  PinnedSlab(uint8_t* data, uint64_t bytes) : data_(data), bytes_(bytes) {}
  uint8_t* data_;
  uint64_t bytes_;
};

class PinnedHostAllocator final : public HostAllocator {
 public:
  explicit PinnedHostAllocator(uint64_t slab_bytes) : slab_bytes_(RoundUp(slab_bytes, kRecordAlign)) {}

  uint8_t* Allocate(uint64_t bytes) override {
    if (bytes == 0) return nullptr;
    const uint64_t size = RoundUp(bytes, kRecordAlign);
    MutexLock lock(&mu_);
    SizeClass& sc = classes_[size];
    if (!sc.free.empty()) {
      uint8_t* p = sc.free.back();
      sc.free.pop_back();
      return p;
    }
    if (sc.next == nullptr || sc.next + size > sc.end) {
      auto slab = PinnedSlab::Create(std::max(slab_bytes_, size));
      if (!slab.ok()) return nullptr;
      sc.next = (*slab)->data();
      sc.end = sc.next + (*slab)->bytes();
      slabs_.push_back(std::move(*slab));
    }
    uint8_t* p = sc.next;
    sc.next += size;
    return p;
  }

  void Free(uint8_t* p, uint64_t bytes) override {
    if (!p) return;
    MutexLock lock(&mu_);
    classes_[RoundUp(bytes, kRecordAlign)].free.push_back(p);
  }

 private:
  struct SizeClass {
    std::vector<uint8_t*> free;  // records returned by Free, reused LIFO
    uint8_t* next = nullptr;     // the uncarved rest of this size's newest slab
    uint8_t* end = nullptr;
  };
  const uint64_t slab_bytes_;
  Mutex mu_;
  absl::flat_hash_map<uint64_t, SizeClass> classes_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<PinnedSlab>> slabs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<HostAllocator>> MakePinnedHostAllocator(uint64_t slab_bytes) {
  // Pin a page now, so that a machine without a usable driver fails here and not on the first demotion.
  auto probe = PinnedSlab::Create(kRecordAlign);
  if (!probe.ok()) return probe.status();
  return std::make_unique<PinnedHostAllocator>(slab_bytes);
}

}  // namespace kvtier
