#include "tiering/ssd/payload_codec.h"

#include <zstd.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace kvtier {
namespace {

constexpr double kEwmaWeight = 0.25;

double Ewma(double old, double sample) { return old == 0 ? sample : old + kEwmaWeight * (sample - old); }

struct CctxDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DctxDeleter {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

// One context per thread: contexts are reusable but not shareable.
ZSTD_CCtx* ThreadCctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CctxDeleter> ctx(ZSTD_createCCtx());
  return ctx.get();
}
ZSTD_DCtx* ThreadDctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DctxDeleter> ctx(ZSTD_createDCtx());
  return ctx.get();
}

}  // namespace

PayloadCodec::PayloadCodec(SsdCompression mode, int zstd_level, double min_ratio, WorkerPool* pool)
    : mode_(mode), level_(zstd_level), min_ratio_(min_ratio), pool_(pool) {}

bool PayloadCodec::ShouldCompress() {
  ssd::MutexLock lock(&mu_);
  if (mode_ == SsdCompression::kOn) return true;
  if (mode_ == SsdCompression::kOff) return false;
  const Estimates& e = est_;
  if (e.ratio == 0 || e.compress_bps == 0) {
    est_.compressing = true;  // no estimate yet: measure
  } else if (e.ratio < min_ratio_) {
    est_.compressing = false;
  } else if (e.disk_write_bps == 0) {
    est_.compressing = true;  // compresses well, disk speed unknown yet: the first writes will tell
  } else {
    const double threads = static_cast<double>(pool_->num_threads() + 1);
    const double with = 1.0 / (threads * e.compress_bps) + 1.0 / (e.disk_write_bps * e.ratio);
    const double without = 1.0 / e.disk_write_bps;
    est_.compressing = with < without;
  }
  return est_.compressing;
}

void PayloadCodec::Observe(uint64_t raw, uint64_t compressed, absl::Duration elapsed) {
  ssd::MutexLock lock(&mu_);
  const double secs = std::max(absl::ToDoubleSeconds(elapsed), 1e-9);
  est_.ratio = Ewma(est_.ratio, static_cast<double>(raw) / static_cast<double>(std::max<uint64_t>(compressed, 1)));
  est_.compress_bps = Ewma(est_.compress_bps, static_cast<double>(raw) / secs);
}

void PayloadCodec::ObserveDiskWrite(uint64_t bytes, absl::Duration elapsed) {
  if (bytes == 0) return;
  ssd::MutexLock lock(&mu_);
  est_.disk_write_bps =
      Ewma(est_.disk_write_bps, static_cast<double>(bytes) / std::max(absl::ToDoubleSeconds(elapsed), 1e-9));
}

PayloadCodec::Estimates PayloadCodec::estimates() const {
  ssd::MutexLock lock(&mu_);
  return est_;
}

void PayloadCodec::CompressBatch(std::span<const std::string_view> payloads, std::vector<std::string>* compressed) {
  compressed->assign(payloads.size(), std::string());
  if (mode_ == SsdCompression::kOff || payloads.empty()) return;
  const bool all = ShouldCompress();
  std::vector<bool> pick(payloads.size(), all);
  if (!all) {
    // Sample one payload in kSampleEvery so the estimates follow the data.
    ssd::MutexLock lock(&mu_);
    for (size_t i = 0; i < payloads.size(); ++i) {
      if (++since_sample_ >= kSampleEvery) {
        since_sample_ = 0;
        pick[i] = true;
      }
    }
  }
  pool_->ParallelFor(payloads.size(), [&](size_t i) {
    if (!pick[i] || payloads[i].empty()) return;
    const std::string_view in = payloads[i];
    std::string out(ZSTD_compressBound(in.size()), '\0');
    const absl::Time start = absl::Now();
    const size_t n = ZSTD_compressCCtx(ThreadCctx(), out.data(), out.size(), in.data(), in.size(), level_);
    const absl::Duration took = absl::Now() - start;
    if (ZSTD_isError(n)) return;  // store raw
    Observe(in.size(), n, took);
    if (static_cast<double>(in.size()) < min_ratio_ * static_cast<double>(n)) return;  // does not pay
    out.resize(n);
    (*compressed)[i] = std::move(out);
  });
}

absl::StatusOr<std::string> PayloadCodec::Decompress(std::string_view frame, uint32_t raw_length) {
  std::string out(raw_length, '\0');
  absl::Status s = DecompressInto(frame, std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), out.size()));
  if (!s.ok()) return s;
  return out;
}

absl::Status PayloadCodec::DecompressInto(std::string_view frame, std::span<uint8_t> out) {
  const size_t n = ZSTD_decompressDCtx(ThreadDctx(), out.data(), out.size(), frame.data(), frame.size());
  if (ZSTD_isError(n)) return absl::DataLossError(absl::StrFormat("zstd: %s", ZSTD_getErrorName(n)));
  if (n != out.size()) return absl::DataLossError("zstd frame decodes to the wrong length");
  return absl::OkStatus();
}

}  // namespace kvtier
