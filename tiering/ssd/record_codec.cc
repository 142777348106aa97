#include "tiering/ssd/record_codec.h"

#include <cstring>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace kvtier {
namespace {

namespace f = ssd_format;

void Put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }  // the tier targets little-endian hosts
void Put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void Put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
template <typename T>
T Get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

Checksum128 RecordChecksum(const uint8_t* header, std::string_view metadata, std::string_view payload) {
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  XXH3_128bits_update(&state, header, f::kRecordChecksumOffset);
  XXH3_128bits_update(&state, metadata.data(), metadata.size());
  XXH3_128bits_update(&state, payload.data(), payload.size());
  const XXH128_hash_t h = XXH3_128bits_digest(&state);
  return Checksum128{h.low64, h.high64};
}

}  // namespace

void EncodeRecordHeader(RecordHeader* header, std::string_view metadata, std::string_view stored_payload,
                        uint8_t out[f::kHeaderSize]) {
  std::memset(out, 0, f::kHeaderSize);
  Put32(out + f::kMagicOffset, f::kRecordMagic);
  Put16(out + f::kVersionOffset, f::kRecordVersion);
  out[f::kCodecOffset] = static_cast<uint8_t>(header->codec);
  out[f::kFlagsOffset] = 0;
  Put64(out + f::kKeyOffset, header->key.lo);
  Put64(out + f::kKeyOffset + 8, header->key.hi);
  Put32(out + f::kMetadataLengthOffset, header->metadata_length);
  Put32(out + f::kStoredLengthOffset, header->stored_length);
  Put32(out + f::kRawLengthOffset, header->raw_length);
  Put64(out + f::kSequenceOffset, header->sequence);
  header->record_checksum = RecordChecksum(out, metadata, stored_payload);
  Put64(out + f::kRecordChecksumOffset, header->record_checksum.lo);
  Put64(out + f::kRecordChecksumOffset + 8, header->record_checksum.hi);
  Put64(out + f::kHeaderChecksumOffset, XXH3_64bits(out, f::kHeaderChecksumOffset));
}

absl::StatusOr<RecordHeader> DecodeRecordHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < f::kHeaderSize) return absl::DataLossError("record shorter than its header");
  const uint8_t* p = bytes.data();
  if (Get<uint32_t>(p + f::kMagicOffset) != f::kRecordMagic) return absl::DataLossError("bad record magic");
  if (Get<uint64_t>(p + f::kHeaderChecksumOffset) != XXH3_64bits(p, f::kHeaderChecksumOffset)) {
    return absl::DataLossError("record header checksum mismatch");
  }
  if (Get<uint16_t>(p + f::kVersionOffset) != f::kRecordVersion) {
    return absl::DataLossError(absl::StrFormat("unknown record version %d", Get<uint16_t>(p + f::kVersionOffset)));
  }
  if (p[f::kFlagsOffset] != 0 || Get<uint32_t>(p + f::kReservedOffset) != 0) {
    return absl::DataLossError("unknown record flags");
  }
  RecordHeader h;
  const uint8_t codec = p[f::kCodecOffset];
  if (codec > static_cast<uint8_t>(f::RecordCodec::kZstd)) return absl::DataLossError("unknown record codec");
  h.codec = static_cast<f::RecordCodec>(codec);
  h.key.lo = Get<uint64_t>(p + f::kKeyOffset);
  h.key.hi = Get<uint64_t>(p + f::kKeyOffset + 8);
  h.metadata_length = Get<uint32_t>(p + f::kMetadataLengthOffset);
  h.stored_length = Get<uint32_t>(p + f::kStoredLengthOffset);
  h.raw_length = Get<uint32_t>(p + f::kRawLengthOffset);
  h.sequence = Get<uint64_t>(p + f::kSequenceOffset);
  h.record_checksum.lo = Get<uint64_t>(p + f::kRecordChecksumOffset);
  h.record_checksum.hi = Get<uint64_t>(p + f::kRecordChecksumOffset + 8);
  if (h.metadata_length > f::kMaxMetadataLength || h.stored_length > f::kMaxPayloadLength ||
      h.raw_length > f::kMaxPayloadLength) {
    return absl::DataLossError("record length out of bounds");
  }
  if (h.codec == f::RecordCodec::kNone && h.raw_length != h.stored_length) {
    return absl::DataLossError("uncompressed record with raw_length != stored_length");
  }
  return h;
}

absl::StatusOr<RecordHeader> VerifyRecordParts(std::span<const uint8_t> head, std::span<const uint8_t> payload) {
  absl::StatusOr<RecordHeader> h = DecodeRecordHeader(head);
  if (!h.ok()) return h.status();
  if (head.size() < uint64_t{f::kHeaderSize} + h->metadata_length || payload.size() < h->stored_length) {
    return absl::DataLossError("record truncated");
  }
  const std::string_view metadata(reinterpret_cast<const char*>(head.data()) + f::kHeaderSize, h->metadata_length);
  const std::string_view stored(reinterpret_cast<const char*>(payload.data()), h->stored_length);
  if (RecordChecksum(head.data(), metadata, stored) != h->record_checksum) {
    return absl::DataLossError("record checksum mismatch");
  }
  return h;
}

absl::StatusOr<RecordHeader> VerifyRecord(std::span<const uint8_t> bytes) {
  absl::StatusOr<RecordHeader> h = DecodeRecordHeader(bytes);
  if (!h.ok()) return h.status();
  const uint64_t prefix = uint64_t{f::kHeaderSize} + h->metadata_length;
  if (bytes.size() < prefix) return absl::DataLossError("record truncated");
  return VerifyRecordParts(bytes, bytes.subspan(prefix));
}

}  // namespace kvtier
