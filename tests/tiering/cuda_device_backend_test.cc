// The CUDA device backend against the host device (the CPU path is the reference: the formats are
// bit-exact between CPU and CUDA), its GPU pool export, the pinned allocator, and a BlockStore running
// on it. Every test that needs a GPU skips visibly without one.
#include "tiering/cuda_device_backend.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "kernels/device.h"
#include "kernels/testing/kv_oracle.h"
#include "tests/tiering/store_scenarios.h"
#include "tiering/block_store.h"
#include "tiering/pinned_allocator.h"

#if KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "tiering/gpu_pool.h"
#endif

namespace kvtier {
namespace {

constexpr LayoutShape kShape{8, 4, 128, 16};  // 128 KiB fp16 pages

const Layout* RegisterLayout(LayoutRegistry& registry, const LayoutShape& shape, Format resident, Format offload) {
  LayoutSpec spec;
  spec.shape = shape;
  spec.policy = PrecisionPolicy::Uniform(resident, offload);
  spec.policy_fingerprint =
      std::to_string(static_cast<int>(resident)) + "/" + std::to_string(static_cast<int>(offload));
  auto l = registry.Register(spec);
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? *l : nullptr;
}

std::vector<std::vector<uint8_t>> OraclePages(const Layout& layout, int n, uint64_t salt) {
  std::vector<std::vector<uint8_t>> pages(n, std::vector<uint8_t>(layout.activation_geometry.page_bytes()));
  for (int i = 0; i < n; ++i)
    testing::FillActivationPage(layout.activation_geometry, Format::kFp16, salt * 1000 + i, pages[i].data());
  return pages;
}

template <class T>
std::vector<T*> Pointers(std::vector<std::vector<uint8_t>>& v) {
  std::vector<T*> out;
  for (auto& x : v) out.push_back(x.data());
  return out;
}

class CudaDeviceBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ProbeGpu().available) GTEST_SKIP() << "no GPU: " << ProbeGpu().why_not;
    auto b = MakeCudaDeviceBackend(ProbeGpu().device);
    ASSERT_TRUE(b.ok()) << b.status();
    cuda_ = std::move(*b);
    host_ = MakeHostDeviceBackend(2);
  }
  std::unique_ptr<DeviceBackend> cuda_, host_;
  LayoutRegistry registry_;
};

TEST(CudaDeviceBackendNoGpu, WithoutAGpuCreationFailsCleanlyAndTheHostDeviceIsChosen) {
  if (ProbeGpu().available) GTEST_SKIP() << "a GPU is present: " << ProbeGpu().name;
  EXPECT_FALSE(MakeCudaDeviceBackend(0).ok());
  EXPECT_FALSE(MakePinnedHostAllocator().ok());
  DeviceChoice c = ChooseDevice(1);
  ASSERT_NE(c.device, nullptr);
  ASSERT_NE(c.host_allocator, nullptr);
  EXPECT_EQ(c.device->name(), "host");
  EXPECT_NE(c.why.find("device=host"), std::string::npos) << c.why;
}

TEST_F(CudaDeviceBackendTest, DaemonChoosesTheCudaBackendWithPinnedRecords) {
  DeviceChoice c = ChooseDevice(1);
  ASSERT_NE(c.device, nullptr);
  EXPECT_TRUE(c.device->is_gpu()) << c.why;
  EXPECT_EQ(c.device->name().rfind("cuda:", 0), 0u) << c.device->name();
}

TEST_F(CudaDeviceBackendTest, WrittenActivationsReadBackExactly) {
  const Layout* layout = RegisterLayout(registry_, kShape, Format::kFp16, Format::kInt8);
  ASSERT_NE(layout, nullptr);
  auto arena = cuda_->CreateArena(*layout, 64);
  ASSERT_TRUE(arena.ok()) << arena.status();
  auto pages = OraclePages(*layout, 24, 1);
  std::vector<int32_t> slots;
  for (int i = 0; i < 24; ++i) slots.push_back((i * 37) % 64);  // scattered, distinct
  ASSERT_TRUE(cuda_->WriteActivations(*layout, **arena, slots, Pointers<const uint8_t>(pages)).ok());
  std::vector<std::vector<uint8_t>> back(24, std::vector<uint8_t>(pages[0].size(), 0xAB));
  ASSERT_TRUE(cuda_->ReadActivations(*layout, **arena, slots, Pointers<uint8_t>(back)).ok());
  for (int i = 0; i < 24; ++i) EXPECT_EQ(back[i], pages[i]) << "page " << i;
}

// Page-out to int8 gives the host device's bytes exactly, for records in pinned memory (direct DMA) and
// in plain memory (through pinned staging) alike; page-in brings the pages back within the int8 bound.
TEST_F(CudaDeviceBackendTest, PageOutMatchesTheHostDeviceBitForBitAndPagesInWithinTheInt8Bound) {
  const Layout* layout = RegisterLayout(registry_, kShape, Format::kFp16, Format::kInt8);
  ASSERT_NE(layout, nullptr);
  constexpr int kPages = 40;
  auto cuda_arena = cuda_->CreateArena(*layout, 128);
  auto host_arena = host_->CreateArena(*layout, 128);
  ASSERT_TRUE(cuda_arena.ok() && host_arena.ok());
  auto pages = OraclePages(*layout, kPages, 2);
  std::vector<int32_t> slots, back_slots;
  for (int i = 0; i < kPages; ++i) slots.push_back(i * 3), back_slots.push_back(i * 3 + 1);
  ASSERT_TRUE(cuda_->WriteActivations(*layout, **cuda_arena, slots, Pointers<const uint8_t>(pages)).ok());
  ASSERT_TRUE(host_->WriteActivations(*layout, **host_arena, slots, Pointers<const uint8_t>(pages)).ok());

  const uint64_t record = layout->offload_record_bytes();
  auto pinned = MakePinnedHostAllocator();
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  std::vector<std::vector<uint8_t>> plain(kPages, std::vector<uint8_t>(record));
  std::vector<uint8_t*> cuda_records;
  for (int i = 0; i < kPages; ++i) {
    uint8_t* r = i % 3 == 2 ? plain[i].data() : (*pinned)->Allocate(record);  // runs of both kinds
    ASSERT_NE(r, nullptr);
    cuda_records.push_back(r);
  }
  std::vector<std::vector<uint8_t>> host_records(kPages, std::vector<uint8_t>(record));
  ASSERT_TRUE(cuda_->PageOut(*layout, layout->offload, **cuda_arena, slots, cuda_records).ok());
  ASSERT_TRUE(host_->PageOut(*layout, layout->offload, **host_arena, slots, Pointers<uint8_t>(host_records)).ok());
  for (int i = 0; i < kPages; ++i)
    EXPECT_EQ(std::memcmp(cuda_records[i], host_records[i].data(), record), 0) << "record " << i;

  std::vector<const uint8_t*> in(cuda_records.begin(), cuda_records.end());
  ASSERT_TRUE(cuda_->PageIn(*layout, layout->offload, **cuda_arena, back_slots, in).ok());
  ASSERT_TRUE(
      host_->PageIn(*layout, layout->offload, **host_arena, back_slots, Pointers<const uint8_t>(host_records)).ok());
  std::vector<std::vector<uint8_t>> cuda_back(kPages, std::vector<uint8_t>(pages[0].size()));
  std::vector<std::vector<uint8_t>> host_back = cuda_back;
  ASSERT_TRUE(cuda_->ReadActivations(*layout, **cuda_arena, back_slots, Pointers<uint8_t>(cuda_back)).ok());
  ASSERT_TRUE(host_->ReadActivations(*layout, **host_arena, back_slots, Pointers<uint8_t>(host_back)).ok());
  float worst = 0;
  for (int i = 0; i < kPages; ++i) {
    EXPECT_EQ(cuda_back[i], host_back[i]) << "page " << i;
    const auto r = testing::CheckActivationPage(layout->activation_geometry, Format::kFp16, 2 * 1000 + i,
                                                cuda_back[i].data(), 1.0f / 127.0f);
    EXPECT_EQ(r.bad_values, 0) << "page " << i;
    worst = std::max(worst, r.max_rel_error);
  }
  EXPECT_GT(worst, 0.0f);  // it really went through int8
  for (int i = 0; i < kPages; ++i)
    if (i % 3 != 2) (*pinned)->Free(cuda_records[i], record);
}

TEST_F(CudaDeviceBackendTest, BatchesLargerThanTheStagingAreConvertedInChunks) {
  CudaDeviceBackendOptions small;
  small.staging_bytes = 3 * 128 * 1024;  // 1.5 activation pages per buffer: one page per chunk, 11 chunks
  auto b = MakeCudaDeviceBackend(ProbeGpu().device, small);
  ASSERT_TRUE(b.ok()) << b.status();
  const Layout* layout = RegisterLayout(registry_, kShape, Format::kFp16, Format::kFp16);
  ASSERT_NE(layout, nullptr);
  auto arena = (*b)->CreateArena(*layout, 32);
  ASSERT_TRUE(arena.ok()) << arena.status();
  auto pages = OraclePages(*layout, 11, 3);
  std::vector<int32_t> slots;
  for (int i = 0; i < 11; ++i) slots.push_back(31 - 2 * i);
  ASSERT_TRUE((*b)->WriteActivations(*layout, **arena, slots, Pointers<const uint8_t>(pages)).ok());
  std::vector<std::vector<uint8_t>> records(11, std::vector<uint8_t>(layout->offload_record_bytes()));
  ASSERT_TRUE((*b)->PageOut(*layout, layout->offload, **arena, slots, Pointers<uint8_t>(records)).ok());
  std::vector<int32_t> back_slots;
  for (int i = 0; i < 11; ++i) back_slots.push_back(2 * i);
  ASSERT_TRUE((*b)->PageIn(*layout, layout->offload, **arena, back_slots, Pointers<const uint8_t>(records)).ok());
  std::vector<std::vector<uint8_t>> back(11, std::vector<uint8_t>(pages[0].size()));
  ASSERT_TRUE((*b)->ReadActivations(*layout, **arena, back_slots, Pointers<uint8_t>(back)).ok());
  for (int i = 0; i < 11; ++i) EXPECT_EQ(back[i], pages[i]) << "page " << i;  // fp16 all the way: exact
}

TEST_F(CudaDeviceBackendTest, BadBatchesAreRefusedWithoutTouchingTheGpu) {
  const Layout* layout = RegisterLayout(registry_, kShape, Format::kFp16, Format::kInt8);
  ASSERT_NE(layout, nullptr);
  auto arena = cuda_->CreateArena(*layout, 8);
  ASSERT_TRUE(arena.ok()) << arena.status();
  std::vector<uint8_t> page(layout->activation_geometry.page_bytes());
  std::vector<uint8_t*> dst{page.data()};
  const std::vector<int32_t> never_written{5}, out_of_range{8}, two{0, 1};
#if KVTIER_WITH_CUDA
  auto exported = ExportArena(*cuda_, **arena);  // lazily committed only with VMM
  ASSERT_TRUE(exported.ok()) << exported.status();
  if (exported->kind == GpuPoolExport::Kind::kVmmPosixFd) {
    EXPECT_EQ(cuda_->ReadActivations(*layout, **arena, never_written, dst).code(),
              absl::StatusCode::kFailedPrecondition);
  }
  CloseExportFds(*exported);
#endif
  EXPECT_EQ(cuda_->ReadActivations(*layout, **arena, out_of_range, dst).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cuda_->ReadActivations(*layout, **arena, two, dst).code(), absl::StatusCode::kInvalidArgument);
  auto host_arena = host_->CreateArena(*layout, 8);
  ASSERT_TRUE(host_arena.ok());
  EXPECT_EQ(cuda_->ReadActivations(*layout, **host_arena, std::vector<int32_t>{0}, dst).code(),
            absl::StatusCode::kFailedPrecondition);
}

#if KVTIER_WITH_CUDA
// Records in separate pinned allocations whose addresses happen to line up at a constant stride must not
// be merged into one (2D) copy: the driver rejects a copy that crosses from one pinned allocation into
// another with cudaErrorInvalidValue, and leaves that error on the thread for the next launch check.
TEST_F(CudaDeviceBackendTest, RecordsInSeparatePinnedAllocationsAreCopiedPerAllocation) {
  const Layout* layout = RegisterLayout(registry_, kShape, Format::kFp16, Format::kInt8);
  ASSERT_NE(layout, nullptr);
  constexpr int kPages = 12;
  const uint64_t record = layout->offload_record_bytes();
  std::vector<uint8_t*> allocations;
  for (int i = 0; i < kPages / 2; ++i) {
    void* p = nullptr;
    ASSERT_EQ(cudaHostAlloc(&p, 2 * record, cudaHostAllocPortable), cudaSuccess);
    allocations.push_back(static_cast<uint8_t*>(p));
  }
  std::sort(allocations.begin(), allocations.end());  // ascending: every neighbour pair is a 2D candidate
  std::vector<uint8_t*> records;  // two records per allocation, then the next allocation
  for (uint8_t* a : allocations) records.insert(records.end(), {a, a + record});
  auto cuda_arena = cuda_->CreateArena(*layout, 2 * kPages);
  auto host_arena = host_->CreateArena(*layout, 2 * kPages);
  ASSERT_TRUE(cuda_arena.ok() && host_arena.ok());
  auto pages = OraclePages(*layout, kPages, 7);
  std::vector<int32_t> slots, back_slots;
  for (int i = 0; i < kPages; ++i) slots.push_back(i), back_slots.push_back(kPages + i);
  ASSERT_TRUE(cuda_->WriteActivations(*layout, **cuda_arena, slots, Pointers<const uint8_t>(pages)).ok());
  ASSERT_TRUE(host_->WriteActivations(*layout, **host_arena, slots, Pointers<const uint8_t>(pages)).ok());
  absl::Status out = cuda_->PageOut(*layout, layout->offload, **cuda_arena, slots, records);
  ASSERT_TRUE(out.ok()) << out;
  std::vector<std::vector<uint8_t>> host_records(kPages, std::vector<uint8_t>(record));
  ASSERT_TRUE(host_->PageOut(*layout, layout->offload, **host_arena, slots, Pointers<uint8_t>(host_records)).ok());
  for (int i = 0; i < kPages; ++i) EXPECT_EQ(std::memcmp(records[i], host_records[i].data(), record), 0) << i;
  absl::Status in = cuda_->PageIn(*layout, layout->offload, **cuda_arena, back_slots,
                                  std::vector<const uint8_t*>(records.begin(), records.end()));
  ASSERT_TRUE(in.ok()) << in;
  std::vector<std::vector<uint8_t>> back(kPages, std::vector<uint8_t>(pages[0].size()));
  ASSERT_TRUE(cuda_->ReadActivations(*layout, **cuda_arena, back_slots, Pointers<uint8_t>(back)).ok());
  for (int i = 0; i < kPages; ++i) {
    const auto r = testing::CheckActivationPage(layout->activation_geometry, Format::kFp16, 7 * 1000 + i,
                                                back[i].data(), 1.0f / 127.0f);
    EXPECT_EQ(r.bad_values, 0) << "page " << i;
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // nothing failed quietly on the way
  for (uint8_t* a : allocations) cudaFreeHost(a);
}
#endif

TEST_F(CudaDeviceBackendTest, PinnedRecordsOfOneSizeAreAdjacentAndReused) {
  auto pinned = MakePinnedHostAllocator(1 << 20);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  uint8_t* a = (*pinned)->Allocate(10000);
  uint8_t* b = (*pinned)->Allocate(10000);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 4096, 0u);
  EXPECT_EQ(b, a + 12288);  // 10000 rounded up to 4 KiB
  (*pinned)->Free(a, 10000);
  EXPECT_EQ((*pinned)->Allocate(10000), a);
  (*pinned)->Free(a, 10000);
  (*pinned)->Free(b, 10000);
}

#if KVTIER_WITH_CUDA
TEST_F(CudaDeviceBackendTest, ExportedArenaMapsElsewhereWithTheSameBytes) {
  const Layout* layout = RegisterLayout(registry_, kShape, Format::kFp16, Format::kInt8);
  ASSERT_NE(layout, nullptr);
  auto arena = cuda_->CreateArena(*layout, 16);
  ASSERT_TRUE(arena.ok()) << arena.status();
  auto pages = OraclePages(*layout, 4, 4);
  const std::vector<int32_t> slots{0, 3, 9, 15};
  ASSERT_TRUE(cuda_->WriteActivations(*layout, **arena, slots, Pointers<const uint8_t>(pages)).ok());
  auto exported = ExportArena(*cuda_, **arena);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(ExportArena(*host_, **arena).status().code(), absl::StatusCode::kFailedPrecondition);
  if (exported->kind == GpuPoolExport::Kind::kLegacyIpc)
    GTEST_SKIP() << "legacy IPC export: cudaIpcOpenMemHandle cannot open a handle in its own process";
  EXPECT_FALSE(exported->chunks.empty());
  auto mapping = GpuPoolMapping::Import(*exported);
  CloseExportFds(*exported);
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  const uint64_t page_bytes = (*arena)->page_bytes();
  for (int32_t s : slots) {
    std::vector<uint8_t> via_arena(page_bytes), via_mapping(page_bytes);
    ASSERT_EQ(cudaMemcpy(via_arena.data(), (*arena)->page(s), page_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(via_mapping.data(), (*mapping)->base() + s * page_bytes, page_bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_EQ(via_arena, via_mapping) << "slot " << s;
  }
}
#endif

// The BlockStore's self-verifying workload (tests/tiering/block_store_test.cc) on the CUDA backend with
// pinned host records: sessions on several threads write, commit, demote, promote and read prompts
// while a small pool keeps blocks moving; every page read must match the oracle within the int8 bound.
class CudaBlockStoreTest : public ::testing::Test {
 protected:
  static constexpr LayoutShape kStoreShape{4, 2, 64, 16};
  void SetUp() override {
    if (!ProbeGpu().available) GTEST_SKIP() << "no GPU: " << ProbeGpu().why_not;
    auto device = MakeCudaDeviceBackend(ProbeGpu().device);
    ASSERT_TRUE(device.ok()) << device.status();
    auto pinned = MakePinnedHostAllocator();
    ASSERT_TRUE(pinned.ok()) << pinned.status();
    LayoutSpec spec;
    spec.shape = kStoreShape;
    spec.policy = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
    spec.policy_fingerprint = "fp16/int8";
    auto probe = probe_registry_.Register(spec);
    ASSERT_TRUE(probe.ok());
    BlockStoreOptions o;
    o.gpu_pool_bytes = (*probe)->resident.page_bytes() * 48;  // small: blocks keep moving
    o.host_tier_bytes = 64ull << 20;
    store_ = std::make_unique<BlockStore>(o, std::move(*device), std::move(*pinned));
    auto l = store_->RegisterLayout(spec);
    ASSERT_TRUE(l.ok()) << l.status();
    layout_ = *l;
  }

  LayoutRegistry probe_registry_;
  std::unique_ptr<BlockStore> store_;
  const Layout* layout_ = nullptr;
};

// An engine writes freshly allocated blocks in place through its mapping of the pool, before the daemon
// ever touched them: the pool's memory behind every allocated slot must be committed (and exported) at
// Allocate, not at the daemon's first write.
TEST_F(CudaBlockStoreTest, AllocatedSlotsAreBackedAndExportedBeforeAnyWrite) {
  auto blocks = store_->Allocate(/*session=*/7, layout_->id, 20);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  auto e = store_->ExportPool(layout_->id);
  ASSERT_TRUE(e.ok()) << e.status();
  for (const AllocatedBlock& b : *blocks) {
    const uint64_t begin = static_cast<uint64_t>(b.slot) * e->page_bytes, end = begin + e->page_bytes;
    uint64_t at = begin;
    for (const PoolExport::Chunk& c : e->chunks)
      if (c.offset <= at && at < c.offset + c.bytes) at = c.offset + c.bytes;
    EXPECT_GE(at, end) << "slot " << b.slot << " is not inside an exported (committed) chunk";
  }
  ClosePoolExport(*e);
  store_->ReleaseSession(7);
}

TEST_F(CudaBlockStoreTest, ConcurrentSessionsAlwaysReadTheirOwnPromptsContent) {
  const auto r = testing::RunConcurrentSessions(*store_, *layout_, 4, 25, /*demote_host=*/false);
  EXPECT_EQ(r.failures, 0) << r.first_failure;
  EXPECT_GT(r.pages_checked, 100);
  const StoreStats stats = store_->Stats();
  EXPECT_EQ(stats.pinned_blocks, 0u);
  EXPECT_GT(stats.page_outs, 0u);  // blocks really moved through the CUDA page-out and page-in paths
  EXPECT_GT(stats.page_ins, 0u);
}

}  // namespace
}  // namespace kvtier
