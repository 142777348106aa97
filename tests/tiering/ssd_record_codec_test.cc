// The SSD record format (record_format.h) and its codec: round trips, and rejection of every kind of
// damage a reader can meet (flipped bits anywhere, truncation, bad lengths, unknown version or codec).
#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "tests/tiering/ssd_test_util.h"
#include "tiering/ssd/record_codec.h"

namespace kvtier {
namespace {

namespace f = ssd_format;

std::string MakeRecord(const BlockKey& key, std::string_view metadata, std::string_view payload,
                       RecordHeader* out = nullptr) {
  RecordHeader h;
  h.key = key;
  h.metadata_length = static_cast<uint32_t>(metadata.size());
  h.stored_length = h.raw_length = static_cast<uint32_t>(payload.size());
  h.sequence = 77;
  uint8_t header[f::kHeaderSize];
  EncodeRecordHeader(&h, metadata, payload, header);
  std::string rec(reinterpret_cast<const char*>(header), f::kHeaderSize);
  rec.append(metadata);
  rec.append(payload);
  rec.resize(h.extent_bytes(), '\0');
  if (out) *out = h;
  return rec;
}

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

TEST(SsdRecordCodec, RoundTripsAndPadsToTheBlockSize) {
  const BlockKey key = ssd_test::KeyFor(1);
  for (size_t size : {0ul, 1ul, 4024ul, 4096ul, 100000ul}) {
    RecordHeader written;
    const std::string rec = MakeRecord(key, "meta", ssd_test::PayloadFor(key, size), &written);
    EXPECT_EQ(rec.size() % f::kBlockSize, 0u);
    EXPECT_EQ(rec.size(), f::RecordExtentBytes(4, size));
    absl::StatusOr<RecordHeader> h = VerifyRecord(Bytes(rec));
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->key, key);
    EXPECT_EQ(h->stored_length, size);
    EXPECT_EQ(h->sequence, 77u);
    EXPECT_EQ(h->record_checksum, written.record_checksum);
  }
}

TEST(SsdRecordCodec, AnyFlippedByteOfHeaderMetadataOrPayloadIsDetected) {
  const BlockKey key = ssd_test::KeyFor(2);
  const std::string rec = MakeRecord(key, "metadata!", ssd_test::PayloadFor(key, 9000));
  const size_t covered = f::kHeaderSize + 9 + 9000;
  for (size_t pos = 0; pos < covered; pos += (pos < f::kHeaderSize + 16 ? 1 : 97)) {
    std::string bad = rec;
    bad[pos] ^= 0x01;
    EXPECT_EQ(VerifyRecord(Bytes(bad)).status().code(), absl::StatusCode::kDataLoss) << "byte " << pos;
  }
}

TEST(SsdRecordCodec, HeaderOnlyDecodeChecksTheHeaderChecksum) {
  const BlockKey key = ssd_test::KeyFor(3);
  std::string rec = MakeRecord(key, "m", ssd_test::PayloadFor(key, 50000));
  EXPECT_TRUE(DecodeRecordHeader(Bytes(rec.substr(0, f::kBlockSize))).ok());
  rec[f::kSequenceOffset] ^= 0x10;
  EXPECT_EQ(DecodeRecordHeader(Bytes(rec)).status().code(), absl::StatusCode::kDataLoss);
}

TEST(SsdRecordCodec, TruncatedRecordIsRejected) {
  const BlockKey key = ssd_test::KeyFor(4);
  const std::string rec = MakeRecord(key, "m", ssd_test::PayloadFor(key, 50000));
  EXPECT_EQ(VerifyRecord(Bytes(rec.substr(0, 8192))).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeRecordHeader(Bytes(rec.substr(0, 10))).status().code(), absl::StatusCode::kDataLoss);
}

TEST(SsdRecordCodec, ZeroedAndForeignBlocksAreRejected) {
  const std::string zeros(f::kBlockSize, '\0');
  EXPECT_EQ(DecodeRecordHeader(Bytes(zeros)).status().code(), absl::StatusCode::kDataLoss);
  std::string junk = ssd_test::PayloadFor(ssd_test::KeyFor(5), f::kBlockSize);
  std::memcpy(junk.data(), &f::kRecordMagic, 4);  // right magic, wrong everything else
  EXPECT_EQ(DecodeRecordHeader(Bytes(junk)).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace kvtier
