// Behaviour of SsdTier on a real disk: round trips, warm restart, compression modes, replacement,
// removal, a full tier, on-disk corruption and capacity changes. Parameterized over the two real I/O
// backends (io_uring and the pread/pwrite fallback).
#include "tiering/ssd/ssd_tier.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/record_format.h"

namespace kvtier {
namespace {

using ssd_test::KeyFor;
using ssd_test::MetadataFor;
using ssd_test::PayloadFor;
using ssd_test::PutRange;
using ssd_test::RecordIsIntact;

class SsdTierTest : public ssd_test::TempDirTest, public ::testing::WithParamInterface<bool> {
 protected:
  SsdTierOptions Options() const {
    SsdTierOptions o = SmallOptions();
    o.use_io_uring = GetParam();
    return o;
  }
  std::unique_ptr<SsdTier> OpenTier(SsdTierOptions o) {
    absl::StatusOr<std::unique_ptr<SsdTier>> t = SsdTier::Open(std::move(o));
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *std::move(t) : nullptr;
  }
  // Gets keys [first, first+count) and counts the ones that are served and intact.
  int CountIntact(SsdTier& tier, uint64_t first, int count, bool compressible = false) {
    std::vector<BlockKey> keys;
    for (int i = 0; i < count; ++i) keys.push_back(KeyFor(first + i));
    int intact = 0;
    for (const auto& r : tier.Get(keys)) intact += r.ok() && RecordIsIntact(*r, compressible);
    return intact;
  }
  // Offset of the record of `key` in the slab files (found by its header), or -1.
  std::pair<std::string, off_t> FindRecord(const BlockKey& key) {
    for (const auto& f : std::filesystem::directory_iterator(dir_)) {
      if (f.path().extension() != ".kvt") continue;
      const int fd = ::open(f.path().c_str(), O_RDONLY);
      std::string block(ssd_format::kBlockSize, '\0');
      for (off_t off = 0; pread(fd, block.data(), block.size(), off) == static_cast<ssize_t>(block.size());
           off += ssd_format::kBlockSize) {
        uint32_t magic;
        uint64_t lo, hi;
        std::memcpy(&magic, block.data(), 4);
        std::memcpy(&lo, block.data() + ssd_format::kKeyOffset, 8);
        std::memcpy(&hi, block.data() + ssd_format::kKeyOffset + 8, 8);
        if (magic == ssd_format::kRecordMagic && lo == key.lo && hi == key.hi) {
          ::close(fd);
          return {f.path().string(), off};
        }
      }
      ::close(fd);
    }
    return {"", -1};
  }
  void FlipByte(const std::string& path, off_t offset) {
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c;
    ASSERT_EQ(pread(fd, &c, 1, offset), 1);
    c ^= 0x5a;
    ASSERT_EQ(pwrite(fd, &c, 1, offset), 1);
    ::close(fd);
  }
};

INSTANTIATE_TEST_SUITE_P(Backends, SsdTierTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "IoUring" : "Threads"; });

TEST_P(SsdTierTest, RoundTripsBatchesOfSelfVerifyingRecords) {
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(tier->backend_name().substr(0, 8), GetParam() ? "io_uring" : "threads");
  // Sizes straddle the I/O block and the 4 KiB padding; batches make multi-record streams.
  const size_t sizes[] = {1, 4096 - 72 - 40, 4096, 300000, 700001};
  uint64_t next = 0;
  for (size_t size : sizes) {
    for (const absl::Status& s : PutRange(*tier, next, 5, size)) EXPECT_TRUE(s.ok()) << s;
    next += 5;
  }
  EXPECT_EQ(CountIntact(*tier, 0, 25), 25);
  const SsdTierStats st = tier->Stats();
  EXPECT_EQ(st.records, 25u);
  EXPECT_EQ(st.hits, 25u);
  EXPECT_EQ(st.checksum_failures, 0u);
  EXPECT_GT(st.used_bytes, 0u);
  // A key never put is NOT_FOUND, alongside hits in the same batch.
  const BlockKey keys[] = {KeyFor(3), KeyFor(999)};
  auto r = tier->Get(keys);
  EXPECT_TRUE(r[0].ok());
  EXPECT_EQ(r[1].status().code(), absl::StatusCode::kNotFound);
}

TEST_P(SsdTierTest, ReopenServesTheSameRecordsAndListsThem) {
  {
    auto tier = OpenTier(Options());
    ASSERT_NE(tier, nullptr);
    for (const absl::Status& s : PutRange(*tier, 0, 20, 200000)) ASSERT_TRUE(s.ok()) << s;
    const BlockKey gone[] = {KeyFor(4), KeyFor(5)};
    ASSERT_EQ(*tier->Remove(gone), 2);
  }
  SsdTierOptions o = Options();
  o.recovery_check = SsdTierOptions::RecoveryCheck::kFull;
  auto tier = OpenTier(o);
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(tier->Stats().recovered_records, 18u);
  EXPECT_EQ(tier->Stats().recovery_drops, 0u);
  EXPECT_EQ(CountIntact(*tier, 0, 4) + CountIntact(*tier, 6, 14), 18);
  EXPECT_FALSE(tier->Contains(KeyFor(4)));
  absl::StatusOr<std::vector<SsdEntryInfo>> list = tier->ListEntries();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 18u);
  for (const SsdEntryInfo& e : *list) {
    EXPECT_EQ(e.metadata, MetadataFor(e.key));
    EXPECT_EQ(e.payload_bytes, 200000u);
  }
  // Space used after restart is exactly what the surviving records occupy.
  EXPECT_EQ(tier->Stats().used_bytes, 18 * ssd_format::RecordExtentBytes(MetadataFor(KeyFor(0)).size(), 200000));
}

// A capacity the filesystem cannot hold without dropping below min_free_fraction free gets no new slab
// files (Open fails when not even one fits, and says why); slabs that already exist are reused as they are.
TEST_P(SsdTierTest, NewSlabsNeverEatIntoTheFilesystemsReserve) {
  struct statvfs fs{};
  ASSERT_EQ(::statvfs(dir_.c_str(), &fs), 0);
  const double free_fraction = static_cast<double>(fs.f_bavail) / static_cast<double>(fs.f_blocks);
  if (free_fraction + 0.01 > 0.9) GTEST_SKIP() << "the test filesystem is more than 89% free";
  SsdTierOptions o = Options();
  o.capacity_bytes = 8 << 20;  // two slabs
  {
    auto tier = OpenTier(o);
    ASSERT_NE(tier, nullptr);
    for (const absl::Status& s : PutRange(*tier, 0, 3, 100000)) ASSERT_TRUE(s.ok()) << s;
  }
  SsdTierOptions greedy = o;
  greedy.capacity_bytes = 16 << 20;                   // two more slabs wanted...
  greedy.min_free_fraction = free_fraction + 0.01;   // ...than the reserve allows
  std::vector<std::string> log;
  greedy.log = [&log](std::string_view line) { log.emplace_back(line); };
  auto tier = OpenTier(greedy);
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(tier->Stats().capacity_bytes, 8u << 20);  // the two existing slabs, no new ones
  EXPECT_EQ(CountIntact(*tier, 0, 3), 3);
  bool logged = false;
  for (const std::string& line : log) logged |= line.find("ssd_capacity_reduced") != std::string::npos &&
                                               line.find("free") != std::string::npos;
  EXPECT_TRUE(logged);
  tier.reset();
  std::filesystem::remove_all(dir_);  // a fresh directory: not even one slab fits
  std::filesystem::create_directories(dir_);
  auto none = SsdTier::Open(greedy);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted) << none.status();
  SsdTierOptions bad = o;
  bad.min_free_fraction = 0.95;
  EXPECT_EQ(SsdTier::Open(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(SsdTierTest, CompressionOnShrinksCompressibleRecordsAndRoundTrips) {
  SsdTierOptions o = Options();
  o.compression = SsdCompression::kOn;
  o.worker_threads = 2;
  auto tier = OpenTier(o);
  ASSERT_NE(tier, nullptr);
  for (const absl::Status& s : PutRange(*tier, 0, 8, 500000, /*compressible=*/true)) ASSERT_TRUE(s.ok()) << s;
  for (const absl::Status& s : PutRange(*tier, 100, 4, 500000, /*compressible=*/false)) ASSERT_TRUE(s.ok()) << s;
  const SsdTierStats st = tier->Stats();
  EXPECT_EQ(st.compressed_records, 8u);  // the incompressible ones are stored raw
  EXPECT_GT(st.compression_ratio, 1.3);
  EXPECT_EQ(CountIntact(*tier, 0, 8, true), 8);
  EXPECT_EQ(CountIntact(*tier, 100, 4, false), 4);
  tier.reset();
  tier = OpenTier(o);
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(CountIntact(*tier, 0, 8, true), 8);
}

TEST_P(SsdTierTest, CompressionAutoSkipsIncompressiblePayloads) {
  SsdTierOptions o = Options();
  o.compression = SsdCompression::kAuto;
  auto tier = OpenTier(o);
  ASSERT_NE(tier, nullptr);
  for (int round = 0; round < 4; ++round) {
    for (const absl::Status& s : PutRange(*tier, round * 8, 8, 100000, false)) ASSERT_TRUE(s.ok()) << s;
  }
  const SsdTierStats st = tier->Stats();
  EXPECT_EQ(st.compressed_records, 0u);
  EXPECT_DOUBLE_EQ(st.compression_ratio, 1.0);
  EXPECT_EQ(CountIntact(*tier, 0, 32), 32);
}

TEST_P(SsdTierTest, CompressionOffNeverCompresses) {
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  for (const absl::Status& s : PutRange(*tier, 0, 4, 100000, true)) ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(tier->Stats().compressed_records, 0u);
  EXPECT_EQ(CountIntact(*tier, 0, 4, true), 4);
}

TEST_P(SsdTierTest, PutReplacesAnExistingKeyAndFreesTheOldSpace) {
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  ASSERT_TRUE(PutRange(*tier, 0, 1, 100000)[0].ok());
  const uint64_t used_one = tier->Stats().used_bytes;
  ASSERT_TRUE(PutRange(*tier, 0, 1, 300000)[0].ok());
  const BlockKey k[] = {KeyFor(0)};
  auto r = tier->Get(k);
  ASSERT_TRUE(r[0].ok());
  EXPECT_EQ(r[0]->payload.size(), 300000u);
  EXPECT_TRUE(RecordIsIntact(*r[0]));
  EXPECT_GT(tier->Stats().used_bytes, used_one);
  EXPECT_EQ(tier->Stats().records, 1u);
  EXPECT_EQ(tier->Stats().used_bytes, ssd_format::RecordExtentBytes(MetadataFor(KeyFor(0)).size(), 300000));
}

TEST_P(SsdTierTest, FullTierRejectsPutsAndKeepsServingAndRecoversSpaceOnRemove) {
  auto tier = OpenTier(Options());  // 16 MiB
  ASSERT_NE(tier, nullptr);
  int ok = 0, full = 0;
  for (int i = 0; i < 24; ++i) {
    const absl::Status s = PutRange(*tier, i, 1, 1 << 20)[0];
    ok += s.ok();
    full += s.code() == absl::StatusCode::kResourceExhausted;
  }
  EXPECT_EQ(ok, 12);  // 1 MiB + header pads to 1 MiB + 4 KiB: 3 fit in a 4 MiB slab, 4 slabs
  EXPECT_EQ(full, 24 - ok);
  EXPECT_EQ(tier->Stats().full_rejects, static_cast<uint64_t>(full));
  EXPECT_EQ(CountIntact(*tier, 0, ok), ok);
  const BlockKey gone[] = {KeyFor(0), KeyFor(1)};
  ASSERT_EQ(*tier->Remove(gone), 2);
  EXPECT_TRUE(PutRange(*tier, 100, 1, 1 << 20)[0].ok());
}

TEST_P(SsdTierTest, CorruptRecordIsDroppedNotServed) {
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  for (const absl::Status& s : PutRange(*tier, 0, 6, 50000)) ASSERT_TRUE(s.ok()) << s;
  const auto [path, offset] = FindRecord(KeyFor(2));
  ASSERT_GE(offset, 0);
  FlipByte(path, offset + 4096 + 17);  // inside the payload
  const BlockKey k[] = {KeyFor(2)};
  auto r = tier->Get(k);
  EXPECT_EQ(r[0].status().code(), absl::StatusCode::kDataLoss) << r[0].status();
  EXPECT_EQ(tier->Stats().checksum_failures, 1u);
  EXPECT_EQ(tier->Stats().dropped_records, 1u);
  EXPECT_FALSE(tier->Contains(KeyFor(2)));
  EXPECT_EQ(tier->Get(k)[0].status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CountIntact(*tier, 0, 2) + CountIntact(*tier, 3, 3), 5);
  tier.reset();
  tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  EXPECT_FALSE(tier->Contains(KeyFor(2)));  // the drop was persisted
  EXPECT_EQ(tier->Stats().records, 5u);
}

TEST_P(SsdTierTest, CorruptHeaderIsDroppedAtReopen) {
  {
    auto tier = OpenTier(Options());
    ASSERT_NE(tier, nullptr);
    for (const absl::Status& s : PutRange(*tier, 0, 4, 50000)) ASSERT_TRUE(s.ok()) << s;
  }
  const auto [path, offset] = FindRecord(KeyFor(1));
  ASSERT_GE(offset, 0);
  FlipByte(path, offset + ssd_format::kStoredLengthOffset);
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(tier->Stats().recovery_drops, 1u);
  EXPECT_FALSE(tier->Contains(KeyFor(1)));
  EXPECT_EQ(CountIntact(*tier, 0, 1) + CountIntact(*tier, 2, 2), 3);
}

TEST_P(SsdTierTest, ShrinkRelocatesWhatFitsAndReportsWhatWasDropped) {
  auto tier = OpenTier(Options());  // 4 slabs of 4 MiB
  ASSERT_NE(tier, nullptr);
  for (const absl::Status& s : PutRange(*tier, 0, 12, 1 << 20)) ASSERT_TRUE(s.ok()) << s;  // 3 per slab
  const BlockKey gone[] = {KeyFor(0), KeyFor(1), KeyFor(2), KeyFor(3)};
  ASSERT_EQ(*tier->Remove(gone), 4);                                 // slab 0 and one record of slab 1 free: room for 4
  absl::StatusOr<SsdCapacityChange> c = tier->SetCapacity(8 << 20);  // keep 2 slabs (6 records)
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->capacity_bytes, 8u << 20);
  EXPECT_EQ(c->relocated, 4);
  EXPECT_EQ(c->dropped.size(), 2u);
  EXPECT_EQ(tier->Stats().records, 6u);
  EXPECT_EQ(tier->Stats().capacity_bytes, 8u << 20);
  for (const BlockKey& k : c->dropped) EXPECT_FALSE(tier->Contains(k));
  int intact = CountIntact(*tier, 4, 8);
  EXPECT_EQ(intact, 6);
  // The shrunk tier survives a restart with the same capacity, and can grow again.
  tier.reset();
  SsdTierOptions o = Options();
  o.capacity_bytes = 8 << 20;
  tier = OpenTier(o);
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(CountIntact(*tier, 4, 8), 6);
  ASSERT_TRUE(tier->SetCapacity(16 << 20).ok());
  EXPECT_EQ(tier->Stats().capacity_bytes, 16u << 20);
  for (const absl::Status& s : PutRange(*tier, 100, 6, 1 << 20)) EXPECT_TRUE(s.ok()) << s;
}

TEST_P(SsdTierTest, RejectsOversizeItemsAloneInABatch) {
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  const std::string big_meta(ssd_format::kMaxMetadataLength + 1, 'm');
  const std::string payload = PayloadFor(KeyFor(1), 1000);
  const std::string meta = MetadataFor(KeyFor(1));
  const SsdPutItem items[] = {{KeyFor(0), big_meta, "x"}, {KeyFor(1), meta, payload}};
  auto r = tier->Put(items);
  EXPECT_EQ(r[0].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(r[1].ok());
}

TEST_P(SsdTierTest, GetIntoFillsCallerBuffersForRawAndCompressedRecords) {
  SsdTierOptions o = Options();
  o.compression = SsdCompression::kOn;
  auto tier = OpenTier(o);
  ASSERT_NE(tier, nullptr);
  for (const absl::Status& s : PutRange(*tier, 0, 3, 300000, /*compressible=*/true)) ASSERT_TRUE(s.ok()) << s;
  for (const absl::Status& s : PutRange(*tier, 10, 3, 300000, /*compressible=*/false)) ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(tier->Stats().compressed_records, 3u);
  const BlockKey keys[] = {KeyFor(0), KeyFor(10), KeyFor(1), KeyFor(11), KeyFor(99)};
  std::vector<std::string> bufs(5, std::string(400000, '\x7f'));
  std::vector<std::span<uint8_t>> spans;
  for (std::string& b : bufs) spans.emplace_back(reinterpret_cast<uint8_t*>(b.data()), b.size());
  auto r = tier->GetInto(keys, spans);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(r[i].ok()) << i << ": " << r[i].status();
    EXPECT_EQ(r[i]->payload_bytes, 300000u);
    EXPECT_EQ(r[i]->metadata, MetadataFor(keys[i]));
    const bool compressible = i % 2 == 0;
    EXPECT_TRUE(bufs[i].substr(0, 300000) == PayloadFor(keys[i], 300000, compressible)) << i;
    EXPECT_EQ(bufs[i][300000], '\x7f');  // nothing written past the payload
  }
  EXPECT_EQ(r[4].status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*tier->PayloadBytes(KeyFor(10)), 300000u);
  EXPECT_EQ(tier->PayloadBytes(KeyFor(99)).status().code(), absl::StatusCode::kNotFound);
  // A buffer too small for its payload is refused for that key only.
  std::string small(1000, '\0');
  const std::span<uint8_t> two[] = {{reinterpret_cast<uint8_t*>(small.data()), small.size()}, spans[1]};
  const BlockKey two_keys[] = {KeyFor(0), KeyFor(10)};
  auto r2 = tier->GetInto(two_keys, two);
  EXPECT_EQ(r2[0].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(r2[1].ok());
}

TEST_P(SsdTierTest, GetIntoReportsACorruptRecordAsDataLoss) {
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  ASSERT_TRUE(PutRange(*tier, 0, 1, 100000)[0].ok());
  const auto [path, offset] = FindRecord(KeyFor(0));
  ASSERT_GE(offset, 0);
  FlipByte(path, offset + 50000);
  std::string buf(100000, '\0');
  const std::span<uint8_t> spans[] = {{reinterpret_cast<uint8_t*>(buf.data()), buf.size()}};
  const BlockKey keys[] = {KeyFor(0)};
  EXPECT_EQ(tier->GetInto(keys, spans)[0].status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(tier->Contains(KeyFor(0)));
}

TEST(SsdTierOptionsTest, InvalidOptionsAreRejected) {
  SsdTierOptions o;
  EXPECT_EQ(SsdTier::Open(o).status().code(), absl::StatusCode::kInvalidArgument);  // no dir
  o.dir = "/tmp/never-created-kvtier";
  o.slab_bytes = 1000;
  EXPECT_EQ(SsdTier::Open(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
