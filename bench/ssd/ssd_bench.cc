// SSD-tier throughput against the raw sequential O_DIRECT io_uring bandwidth of the same disk, measured
// in the same run with the same queue depth, block size and registered buffers (raw_uring.h).
//
// Records are Llama-3-8B pages: 2 MiB (fp16: 16 tokens x 128 KiB) and 1 MiB (int8), with KV-like
// contents (Gaussian values as fp16, or int8 codes at a per-channel scale) so that zstd sees what it
// would see in service. For each (record, zstd mode) the benchmark repeats `reps` times: raw write,
// tier write (Put of `gib` GiB in batches of `batch` records from `threads` callers, into a fresh tier),
// raw read, tier read through GetInto (into reused caller buffers, BlockStore's promotion path) and
// through Get (the tier allocates each payload). Raw and tier phases alternate so both see the
// same disk conditions; the report gives every repetition and the medians. Throughput is payload bytes
// per second as the caller sees them (with zstd, more than the disk moves). Each configuration runs with
// the tier's two durability modes (SsdDurability: process_crash, kvtierd's default, and power_loss, which
// adds an fdatasync and a synced index commit per batch); the raw write ends with one fdatasync.
//
//   ssd_bench --dir=/var/tmp/kvtier_ssd_bench --gib=2 --reps=3 --qd=16 --block_kib=1024 --batch=16
//             --threads=2 --workers=2 --modes=off,on,auto --durability=process_crash,power_loss
//             --out=bench/results/ssd_tier_vm.json
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/ssd/raw_uring.h"
#include "tiering/ssd/ssd_tier.h"

namespace kvtier::bench {
namespace {

struct Config {
  std::string dir = "/var/tmp/kvtier_ssd_bench";
  double gib = 4;
  int qd = 16;
  uint32_t block_kib = 1024;
  int batch = 16;
  int threads = 2;
  int worker_threads = 2;
  int reps = 3;
  std::string out;
  std::string modes = "off,on,auto";
  std::string durabilities = "process_crash,power_loss";
  SsdDurability durability = SsdDurability::kProcessCrash;  // of the configuration being run
};

bool ParseFlag(const char* arg, const char* name, std::string* value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const int exp = static_cast<int>((x >> 23) & 0xff) - 127 + 15;
  const uint32_t mant = x & 0x7fffff;
  if (exp <= 0) return static_cast<uint16_t>(sign);
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00);
  return static_cast<uint16_t>(sign | (exp << 10) | (mant >> 13));
}

// KV-like page contents: fp16 Gaussian activations, or int8 codes of them at a per-channel scale.
std::string MakePage(size_t bytes, bool int8, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::string p(bytes, '\0');
  if (int8) {
    for (size_t i = 0; i < bytes; ++i) {
      const float scale = 127.f / (3.f + static_cast<float>(i % 128) / 64.f);  // per-channel absmax
      p[i] = static_cast<char>(std::clamp<long>(std::lround(normal(rng) * scale / 2.f), -127, 127));
    }
  } else {
    for (size_t i = 0; i + 1 < bytes; i += 2) {
      const uint16_t h = FloatToHalf(normal(rng) * (0.5f + static_cast<float>(i % 256) / 256.f));
      std::memcpy(&p[i], &h, 2);
    }
  }
  return p;
}

std::string FsName(const std::string& dir) {
  struct statfs s {};
  if (statfs(dir.c_str(), &s) != 0) return "unknown";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0xEF53:
      return "ext4";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x794c7630:
      return "overlayfs";
    default:
      return absl::StrFormat("0x%x", static_cast<unsigned long>(s.f_type));
  }
}

double Gbps(uint64_t bytes, double secs) { return secs > 0 ? static_cast<double>(bytes) / secs / 1e9 : 0; }

// CPU seconds (user + system, all threads) this process has used so far.
double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::string JsonList(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += absl::StrFormat("%s%.3f", i ? ", " : "", v[i]);
  return s + "]";
}

// One repetition: raw write, tier write, raw read, tier read, back to back so that the tier and its
// baseline see the same disk conditions (this machine's disk is shared).
struct Sample {
  double raw_w = 0, tier_w = 0, raw_r = 0, tier_r = 0, disk_w = 0;
  double tier_get_r = 0;
  double cpu_w = 0, cpu_r = 0, cpu_get_r = 0, raw_cpu_w = 0, raw_cpu_r = 0;  // CPU seconds per GB of payload
  SsdTierStats stats;
  int64_t errors = 0;
  std::string error;
};

Sample RunOnce(const Config& c, size_t record, SsdCompression mode, const std::vector<std::string>& pages) {
  Sample out;
  const uint64_t total = static_cast<uint64_t>(c.gib * (1ull << 30));
  const uint32_t block = c.block_kib << 10;
  const std::string raw_path = c.dir + "/raw.bin";
  const std::string dir = c.dir + "/tier";
  std::filesystem::remove(raw_path);
  std::filesystem::remove_all(dir);

  SsdTierOptions o;
  o.dir = dir;
  o.slab_bytes = 1ull << 30;
  o.capacity_bytes = (total * 105 / 100 + o.slab_bytes - 1) / o.slab_bytes * o.slab_bytes;
  o.queue_depth = c.qd;
  o.io_block_bytes = block;
  o.io_buffers = 4 * c.qd;
  o.compression = mode;
  o.durability = c.durability;
  o.worker_threads = c.worker_threads;
  o.log = [](std::string_view) {};
  auto tier = SsdTier::Open(o);
  if (!tier.ok()) {
    out.error = std::string(tier.status().message());
    return out;
  }
  const int64_t n = static_cast<int64_t>(total / record);
  const std::string metadata(256, 'm');  // layout id, parent key, codec, scales: opaque to the tier
  auto key_of = [](int64_t i) { return BlockKey{static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull + 1, 7}; };
  std::atomic<int64_t> errors{0};
  // kPut, kGet (the tier allocates each payload) or kGetInto (into per-thread buffers reused across
  // batches, as BlockStore does with pinned host memory).
  enum Phase { kPut, kGet, kGetInto };
  auto run = [&](Phase phase) {
    const bool write = phase == kPut;
    std::atomic<int64_t> next{0};
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < c.threads; ++t) {
      ts.emplace_back([&] {
        std::vector<std::string> bufs(phase == kGetInto ? c.batch : 0, std::string(record, '\0'));
        std::vector<std::span<uint8_t>> spans;
        for (std::string& b : bufs) spans.emplace_back(reinterpret_cast<uint8_t*>(b.data()), b.size());
        for (;;) {
          const int64_t first = next.fetch_add(c.batch);
          if (first >= n) return;
          const int64_t last = std::min<int64_t>(n, first + c.batch);
          if (write) {
            std::vector<SsdPutItem> items;
            for (int64_t i = first; i < last; ++i) items.push_back({key_of(i), metadata, pages[i % pages.size()]});
            for (const absl::Status& s : (*tier)->Put(items)) errors += !s.ok();
          } else {
            std::vector<BlockKey> keys;
            for (int64_t i = first; i < last; ++i) keys.push_back(key_of(i));
            if (phase == kGet) {
              for (const auto& rec : (*tier)->Get(keys)) errors += !rec.ok() || rec->payload.size() != record;
            } else {
              auto got = (*tier)->GetInto(keys, std::span<const std::span<uint8_t>>(spans.data(), keys.size()));
              for (const auto& info : got) errors += !info.ok() || info->payload_bytes != record;
            }
          }
        }
      });
    }
    for (auto& t : ts) t.join();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return Gbps(static_cast<uint64_t>(n) * record, secs);
  };
  auto raw = [&](bool write) {
    absl::StatusOr<RawResult> r = RawUringSequential(raw_path, total, block, c.qd, write);
    if (!r.ok()) out.error = std::string(r.status().message());
    return r.ok() ? Gbps(r->bytes, r->seconds) : 0.0;
  };
  const double gb = static_cast<double>(n * static_cast<int64_t>(record)) / 1e9;
  double cpu = CpuSeconds();
  auto cpu_since = [&]() {
    const double now = CpuSeconds(), d = now - cpu;
    cpu = now;
    return d / gb;
  };
  out.raw_w = raw(true);
  out.raw_cpu_w = cpu_since();
  const uint64_t disk_before = (*tier)->Stats().disk_bytes_written;
  const auto tw_start = std::chrono::steady_clock::now();
  out.tier_w = run(kPut);
  out.cpu_w = cpu_since();
  out.disk_w = Gbps((*tier)->Stats().disk_bytes_written - disk_before,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - tw_start).count());
  out.raw_r = raw(false);
  out.raw_cpu_r = cpu_since();
  out.tier_r = run(kGetInto);
  out.cpu_r = cpu_since();
  out.tier_get_r = run(kGet);
  out.cpu_get_r = cpu_since();
  out.stats = (*tier)->Stats();
  out.errors = errors.load();
  tier->reset();
  std::filesystem::remove(raw_path);
  std::filesystem::remove_all(dir);
  return out;
}

std::string RunConfig(const Config& c, size_t record, bool int8, SsdCompression mode) {
  std::vector<std::string> pages;
  for (int i = 0; i < 32; ++i) pages.push_back(MakePage(record, int8, 1000 + i));
  std::vector<double> raw_w, tier_w, raw_r, tier_r, tier_get_r, wr, rr, disk_w, cpu_w, cpu_r, cpu_get_r, raw_cpu_w,
      raw_cpu_r;
  Sample last;
  for (int rep = 0; rep < c.reps; ++rep) {
    last = RunOnce(c, record, mode, pages);
    if (!last.error.empty()) return absl::StrFormat("{\"error\": \"%s\"}", last.error);
    raw_w.push_back(last.raw_w);
    tier_w.push_back(last.tier_w);
    raw_r.push_back(last.raw_r);
    tier_r.push_back(last.tier_r);
    disk_w.push_back(last.disk_w);
    cpu_w.push_back(last.cpu_w);
    cpu_r.push_back(last.cpu_r);
    tier_get_r.push_back(last.tier_get_r);
    cpu_get_r.push_back(last.cpu_get_r);
    raw_cpu_w.push_back(last.raw_cpu_w);
    raw_cpu_r.push_back(last.raw_cpu_r);
    wr.push_back(last.tier_w / last.raw_w);
    rr.push_back(last.tier_r / last.raw_r);
  }
  const char* mode_name = mode == SsdCompression::kOff ? "off" : mode == SsdCompression::kOn ? "on" : "auto";
  std::vector<double> get_rr;
  for (size_t i = 0; i < raw_r.size(); ++i) get_rr.push_back(tier_get_r[i] / raw_r[i]);
  return absl::StrFormat(
      "{\"record_bytes\": %d, \"content\": \"%s\", \"zstd\": \"%s\", \"durability\": \"%s\", \"records\": %d, "
      "\"reps\": %d,\n"
      "     \"median\": {\"raw_write_gbps\": %.3f, \"tier_write_gbps\": %.3f, \"write_vs_raw\": %.3f,\n"
      "                \"raw_read_gbps\": %.3f, \"tier_getinto_read_gbps\": %.3f, \"getinto_read_vs_raw\": %.3f,\n"
      "                \"tier_get_read_gbps\": %.3f, \"get_read_vs_raw\": %.3f, \"disk_write_gbps\": %.3f,\n"
      "                \"cpu_s_per_gb\": {\"raw_write\": %.3f, \"tier_write\": %.3f, \"raw_read\": %.3f, "
      "\"tier_getinto\": %.3f, \"tier_get\": %.3f}},\n"
      "     \"raw_write_gbps\": %s, \"tier_write_gbps\": %s, \"raw_read_gbps\": %s,\n"
      "     \"tier_getinto_read_gbps\": %s, \"tier_get_read_gbps\": %s,\n"
      "     \"compression_ratio\": %.3f, \"compressed_records\": %d, \"errors\": %d, \"checksum_failures\": %d, "
      "\"backend\": \"%s\"}",
      record, int8 ? "int8" : "fp16", mode_name,
      c.durability == SsdDurability::kPowerLoss ? "power_loss" : "process_crash", static_cast<int64_t>(c.gib * (1ull << 30)) / record, c.reps,
      Median(raw_w), Median(tier_w), Median(wr), Median(raw_r), Median(tier_r), Median(rr), Median(tier_get_r),
      Median(get_rr), Median(disk_w), Median(raw_cpu_w), Median(cpu_w), Median(raw_cpu_r), Median(cpu_r),
      Median(cpu_get_r), JsonList(raw_w), JsonList(tier_w), JsonList(raw_r), JsonList(tier_r), JsonList(tier_get_r),
      last.stats.compression_ratio, last.stats.compressed_records, last.errors, last.stats.checksum_failures,
      last.stats.backend);
}

int Main(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (ParseFlag(argv[i], "--dir", &v)) {
      c.dir = v;
    } else if (ParseFlag(argv[i], "--gib", &v)) {
      c.gib = std::stod(v);
    } else if (ParseFlag(argv[i], "--qd", &v)) {
      c.qd = std::stoi(v);
    } else if (ParseFlag(argv[i], "--block_kib", &v)) {
      c.block_kib = static_cast<uint32_t>(std::stoul(v));
    } else if (ParseFlag(argv[i], "--batch", &v)) {
      c.batch = std::stoi(v);
    } else if (ParseFlag(argv[i], "--threads", &v)) {
      c.threads = std::stoi(v);
    } else if (ParseFlag(argv[i], "--workers", &v)) {
      c.worker_threads = std::stoi(v);
    } else if (ParseFlag(argv[i], "--reps", &v)) {
      c.reps = std::stoi(v);
    } else if (ParseFlag(argv[i], "--modes", &v)) {
      c.modes = v;
    } else if (ParseFlag(argv[i], "--durability", &v)) {
      c.durabilities = v;
    } else if (ParseFlag(argv[i], "--out", &v)) {
      c.out = v;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  std::filesystem::create_directories(c.dir);
  const uint64_t total = static_cast<uint64_t>(c.gib * (1ull << 30));
  std::vector<std::string> results;
  for (const std::string mode : {"off", "on", "auto"}) {
    if (c.modes.find(mode) == std::string::npos) continue;
    const SsdCompression m = mode == "off"  ? SsdCompression::kOff
                             : mode == "on" ? SsdCompression::kOn
                                            : SsdCompression::kAuto;
    for (const std::string durability : {"process_crash", "power_loss"}) {
      if (c.durabilities.find(durability) == std::string::npos) continue;
      c.durability = durability == "power_loss" ? SsdDurability::kPowerLoss : SsdDurability::kProcessCrash;
      for (const auto& [record, int8] : {std::pair<size_t, bool>{2u << 20, false}, {1u << 20, true}}) {
        results.push_back(RunConfig(c, record, int8, m));
        std::fprintf(stderr, "%s\n", results.back().c_str());
      }
    }
  }

  utsname u{};
  uname(&u);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::string json = absl::StrFormat(
      "{\n  \"benchmark\": \"ssd_tier\",\n  \"host\": \"%s\",\n  \"kernel\": \"%s\",\n  \"cpus\": %d,\n"
      "  \"dir\": \"%s\",\n  \"filesystem\": \"%s\",\n  \"bytes_per_phase\": %d,\n  \"queue_depth\": %d,\n"
      "  \"block_bytes\": %d,\n  \"batch_records\": %d,\n  \"caller_threads\": %d,\n  \"worker_threads\": %d,\n"
      "  \"configs\": [\n    ",
      host, u.release, static_cast<int>(std::thread::hardware_concurrency()), c.dir, FsName(c.dir), total, c.qd,
      c.block_kib << 10, c.batch, c.threads, c.worker_threads);
  for (size_t i = 0; i < results.size(); ++i) json += (i ? ",\n    " : "") + results[i];
  json += "\n  ]\n}\n";
  std::fputs(json.c_str(), stdout);
  if (!c.out.empty()) std::ofstream(c.out) << json;
  return 0;
}

}  // namespace
}  // namespace kvtier::bench

int main(int argc, char** argv) { return kvtier::bench::Main(argc, argv); }
