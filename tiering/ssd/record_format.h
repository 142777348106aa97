// The on-disk format of one SSD-tier record, shared by the writer (record_codec.cc), the reader (the
// same file) and docs/ssd_format.md, which is the prose version of this header.
//
// A slab file is a flat array of 4 KiB blocks. A record starts on a block boundary and occupies a whole
// number of blocks:
//
//   +--------------------+------------------+-------------------------+-----------------+
//   | header (72 bytes)  | metadata (M B)   | payload (S B, as stored)| zeros to 4 KiB  |
//   +--------------------+------------------+-------------------------+-----------------+
//
// Header fields, little-endian:
//    0  u32  magic            kRecordMagic
//    4  u16  version          kRecordVersion
//    6  u8   codec            RecordCodec (how the payload is stored)
//    7  u8   flags            0 (reserved; readers reject unknown bits)
//    8  u8[16] key            BlockKey: lo then hi, 8 bytes each
//   24  u32  metadata_length  M
//   28  u32  stored_length    S: payload bytes on disk (compressed size when codec != kNone)
//   32  u32  raw_length       payload bytes after decoding (== S when codec == kNone)
//   36  u32  reserved         0
//   40  u64  sequence         tier-wide write sequence number (diagnostics, newest-wins on repair)
//   48  u8[16] record_checksum XXH3-128 of header[0, 48) | metadata | stored payload (low 8 B then high)
//   64  u64  header_checksum  XXH3-64 of header[0, 64)
//
// The header checksum lets recovery validate a record by reading only its first block; the record
// checksum covers everything a reader serves. A record is valid only if both verify and every length is
// within bounds; anything else (a torn write, a stale index entry pointing into reused space, a flipped
// bit) is rejected, never repaired.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier::ssd_format {

inline constexpr uint32_t kRecordMagic = 0x5254564b;  // "KVTR" read as little-endian bytes
inline constexpr uint16_t kRecordVersion = 1;
inline constexpr size_t kBlockSize = 4096;  // alignment of records, I/O offsets, lengths and buffers
inline constexpr size_t kHeaderSize = 72;

inline constexpr size_t kMagicOffset = 0;
inline constexpr size_t kVersionOffset = 4;
inline constexpr size_t kCodecOffset = 6;
inline constexpr size_t kFlagsOffset = 7;
inline constexpr size_t kKeyOffset = 8;
inline constexpr size_t kMetadataLengthOffset = 24;
inline constexpr size_t kStoredLengthOffset = 28;
inline constexpr size_t kRawLengthOffset = 32;
inline constexpr size_t kReservedOffset = 36;
inline constexpr size_t kSequenceOffset = 40;
inline constexpr size_t kRecordChecksumOffset = 48;  // the record checksum covers header[0, 48)
inline constexpr size_t kHeaderChecksumOffset = 64;  // the header checksum covers header[0, 64)

// Upper bounds a reader enforces before trusting a length (a corrupt length must not make it allocate
// or read gigabytes).
inline constexpr uint32_t kMaxMetadataLength = 1u << 20;  // 1 MiB
inline constexpr uint32_t kMaxPayloadLength = 1u << 30;   // 1 GiB

enum class RecordCodec : uint8_t {
  kNone = 0,  // payload stored as given
  kZstd = 1,  // payload is one zstd frame whose content is raw_length bytes
};

// Bytes a record with these lengths occupies on disk (header + metadata + payload, padded to 4 KiB).
constexpr uint64_t RecordExtentBytes(uint64_t metadata_length, uint64_t stored_length) {
  const uint64_t n = kHeaderSize + metadata_length + stored_length;
  return (n + kBlockSize - 1) / kBlockSize * kBlockSize;
}

}  // namespace kvtier::ssd_format
