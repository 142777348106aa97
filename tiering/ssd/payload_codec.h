// PayloadCodec: the SSD tier's optional lossless zstd stage over (already quantized) payloads, and the
// policy that decides when it pays.
//
// Modes: kOff never compresses; kOn compresses every payload (still storing it raw when zstd does not
// shrink it by min_ratio); kAuto compresses only while it pays. "Pays" has two parts:
//   1. ratio: the payloads compress by at least min_ratio (int8 KV typically ~1.1-2x, fp8 less, fp16
//      noise-like data not at all);
//   2. speed: writing compressed is faster end to end. Compression runs before the write (not
//      overlapped), so per raw byte it costs 1/(T*c) + 1/(D*r) seconds against 1/D uncompressed, where
//      T is the number of threads, c the measured zstd speed per thread, D the disk write bandwidth the
//      tier measures on its own writes and r the ratio. On a 2 GB/s disk with zstd-1 at ~0.3 GB/s per
//      core this says "don't" unless there are many cores; on a slow disk it says "do".
// While kAuto is not compressing it still compresses one payload in every kSampleEvery to keep c and r
// current; a payload is stored raw whenever its own ratio is below min_ratio, in every mode.
//
// Thread-safety: all methods may be called concurrently; estimates are updated under a mutex.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tiering/ssd/mutex.h"
#include "tiering/ssd/worker_pool.h"

namespace kvtier {

enum class SsdCompression : uint8_t { kOff, kAuto, kOn };

class PayloadCodec {
 public:
  static constexpr int kSampleEvery = 32;

  PayloadCodec(SsdCompression mode, int zstd_level, double min_ratio, WorkerPool* pool);

  // For each payload, either leaves (*compressed)[i] empty (store raw) or fills it with one zstd frame.
  // Runs on the pool in parallel.
  void CompressBatch(std::span<const std::string_view> payloads, std::vector<std::string>* compressed);

  // Decodes one zstd frame that must expand to exactly raw_length bytes; DATA_LOSS otherwise.
  static absl::StatusOr<std::string> Decompress(std::string_view frame, uint32_t raw_length);
  // The same into `out` (exactly the raw length).
  static absl::Status DecompressInto(std::string_view frame, std::span<uint8_t> out);

  // The tier reports each completed write phase so kAuto knows the disk's speed.
  void ObserveDiskWrite(uint64_t bytes, absl::Duration elapsed);

  struct Estimates {
    double ratio = 0;           // raw / compressed over sampled payloads (EWMA), 0 before any sample
    double compress_bps = 0;    // zstd bytes/s per thread (EWMA)
    double disk_write_bps = 0;  // tier write bandwidth (EWMA)
    bool compressing = false;   // kAuto's current decision
  };
  Estimates estimates() const;

 private:
  // Decides for a batch of `n` payloads whether to compress all, or only a sample.
  bool ShouldCompress();
  void Observe(uint64_t raw, uint64_t compressed, absl::Duration elapsed);

  const SsdCompression mode_;
  const int level_;
  const double min_ratio_;
  WorkerPool* const pool_;
  mutable ssd::Mutex mu_;
  Estimates est_ ABSL_GUARDED_BY(mu_);
  uint64_t since_sample_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvtier
