// Encoding and verification of one SSD-tier record (format: record_format.h). Pure functions over byte
// spans; no I/O, thread-compatible.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "tiering/block_key.h"
#include "tiering/ssd/record_format.h"

namespace kvtier {

// A 128-bit XXH3 digest.
struct Checksum128 {
  uint64_t lo = 0;
  uint64_t hi = 0;
  friend bool operator==(const Checksum128&, const Checksum128&) = default;
};

// The decoded fixed fields of a record header.
struct RecordHeader {
  BlockKey key;
  ssd_format::RecordCodec codec = ssd_format::RecordCodec::kNone;
  uint32_t metadata_length = 0;
  uint32_t stored_length = 0;
  uint32_t raw_length = 0;
  uint64_t sequence = 0;
  Checksum128 record_checksum;

  uint64_t extent_bytes() const { return ssd_format::RecordExtentBytes(metadata_length, stored_length); }
};

// Fills `header->record_checksum` from the other fields, `metadata` and `stored_payload`, and writes the
// 72 header bytes to `out`. The lengths in `header` must equal the sizes of the spans.
void EncodeRecordHeader(RecordHeader* header, std::string_view metadata, std::string_view stored_payload,
                        uint8_t out[ssd_format::kHeaderSize]);

// Parses and validates a header from the first bytes of a record (at least kHeaderSize of them): magic,
// version, flags, header checksum and length bounds. DATA_LOSS on any mismatch. Does not check the
// record checksum (the metadata and payload may not have been read).
absl::StatusOr<RecordHeader> DecodeRecordHeader(std::span<const uint8_t> bytes);

// Validates a whole record: header as above, `bytes` long enough for the lengths it states, and the
// record checksum over header, metadata and payload. DATA_LOSS on any mismatch.
absl::StatusOr<RecordHeader> VerifyRecord(std::span<const uint8_t> bytes);

// The same check over a record read into two buffers: `head` holds the header and the metadata (at
// least kHeaderSize + metadata_length bytes), `payload` the stored payload (at least stored_length).
absl::StatusOr<RecordHeader> VerifyRecordParts(std::span<const uint8_t> head, std::span<const uint8_t> payload);

}  // namespace kvtier
