// libFuzzer target over kvtierd's request decoding and validation, through the real gRPC server
// (in-process, host device, unix socket). Each input picks a unary method and either sends its bytes
// raw (the server decodes them) or, when they parse as that method's request, sends the request with
// its session_id (and, depending on a flag byte, layout_id) pointed at a live admin session and layout,
// so that validation deeper than "unknown session" is exercised. Waits (wait_ms) are clamped.
//
// Checked per input: the daemon answers with one of the statuses the API documents (never UNKNOWN or
// INTERNAL, never a crash), and a call that fails changes nothing visible in Stats.
//
// Built with clang (CXX=clang++): coverage-guided libFuzzer (-fsanitize=fuzzer). Built with GCC (the
// default toolchain), which cannot emit libFuzzer's coverage: the small driver at the bottom of this
// file replays the seed corpus and random mutations of it. ctest runs either for a bounded time.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <string>

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>

#include "client/client.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "google/protobuf/descriptor.h"
#include "kvtier/v1/kvtier.pb.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;
namespace pb = google::protobuf;

struct Method {
  const char* name;
  std::unique_ptr<pb::Message> (*make)();
};

template <class T>
std::unique_ptr<pb::Message> Make() {
  return std::make_unique<T>();
}

const Method kMethods[] = {
    {"RegisterLayout", Make<v1::RegisterLayoutRequest>}, {"Allocate", Make<v1::AllocateRequest>},
    {"WriteBlocks", Make<v1::WriteBlocksRequest>},       {"ReadBlocks", Make<v1::ReadBlocksRequest>},
    {"Commit", Make<v1::CommitRequest>},                 {"Lookup", Make<v1::LookupRequest>},
    {"Release", Make<v1::ReleaseRequest>},               {"Stats", Make<v1::StatsRequest>},
    {"Attend", Make<v1::AttendRequest>},                 {"Evict", Make<v1::EvictRequest>},
    {"ListSessions", Make<v1::ListSessionsRequest>},     {"SetTierLimits", Make<v1::SetTierLimitsRequest>},
    {"Flush", Make<v1::FlushRequest>},                   {"Drain", Make<v1::DrainRequest>},
    {"Prefetch", Make<v1::PrefetchRequest>},             {"GetPrefetch", Make<v1::GetPrefetchRequest>},
    {"GetPoolHandle", Make<v1::GetPoolHandleRequest>},
};

struct World {
  std::filesystem::path dir;
  std::unique_ptr<KvTierServer> server;
  std::unique_ptr<Client> client;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::GenericStub> stub;
  uint64_t layout_id = 0;
};

World& TheWorld() {
  static World* w = [] {
    auto* w = new World();
    w->dir = std::filesystem::temp_directory_path() / ("kvtier-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(w->dir);
    v1::DaemonConfig config = DefaultConfig();
    config.set_socket_path((w->dir / "k.sock").string());
    config.mutable_limits()->set_gpu_pool_bytes(16ull << 20);
    config.mutable_limits()->set_host_tier_bytes(16ull << 20);
    config.set_max_message_bytes(4ll << 20);
    config.set_mover_threads(1);
    auto s = KvTierServer::Start(config);
    if (!s.ok()) {
      std::fprintf(stderr, "fuzz: server failed: %s\n", std::string(s.status().message()).c_str());
      std::abort();
    }
    w->server = std::move(*s);
    ClientOptions o;
    o.target = "unix:" + config.socket_path();
    w->client = std::move(*Client::Connect(o));
    v1::LayoutSpec l;
    l.set_num_layers(2);
    l.set_num_kv_heads(1);
    l.set_head_dim(64);
    l.set_block_size(16);
    w->layout_id = w->client->RegisterLayout(l)->layout_id();
    // A committed prefix for lookups, prefetches and attention to find.
    auto a = w->client->Allocate(w->layout_id, 2);
    std::vector<v1::CommitEntry> entries(2);
    for (int b = 0; b < 2; ++b) {
      entries[b].set_block_id(a->block_ids(b));
      entries[b].set_chain_previous(b > 0);
      for (int t = 0; t < 16; ++t) entries[b].add_tokens(b * 16 + t);
    }
    (void)w->client->Commit(entries);
    w->channel = grpc::CreateChannel(o.target, grpc::InsecureChannelCredentials());
    w->stub = std::make_unique<grpc::GenericStub>(w->channel);
    std::atexit([] {
      World& w = TheWorld();
      w.client.reset();
      w.server.reset();
      std::filesystem::remove_all(w.dir);
    });
    return w;
  }();
  return *w;
}

std::string last_response;

grpc::Status Send(World& w, const std::string& method, const std::string& bytes) {
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  std::promise<grpc::Status> done;
  w.stub->UnaryCall(&ctx, "/kvtier.v1.KvTier/" + method, grpc::StubOptions(), &request, &response,
                    [&](grpc::Status st) { done.set_value(std::move(st)); });
  grpc::Status st = done.get_future().get();
  last_response.clear();
  std::vector<grpc::Slice> slices;
  if (st.ok() && response.Dump(&slices).ok())
    for (const auto& sl : slices) last_response.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  return st;
}

// What Stats shows of the store that only calls change (not the background mover, which may move or,
// when the host tier is full, drop blocks at any time): a failed call must leave it as it was.
std::string Visible(World& w) {
  auto s = w.client->Stats();
  if (!s.ok()) return "stats failed";
  uint64_t blocks = 0, dropped = s->blocks_dropped();
  for (const auto& t : s->tiers()) blocks += t.blocks();
  return std::to_string(s->blocks_committed()) + "/" + std::to_string(s->blocks_deduplicated()) + "/" +
         std::to_string(s->pinned_blocks()) + "/" + std::to_string(s->layouts()) + "/" +
         std::to_string(blocks + dropped);
}

void Patch(pb::Message& m, uint8_t flags, uint64_t session, uint64_t layout) {
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  if (const auto* f = d->FindFieldByName("session_id"); f && !(flags & 2)) r->SetUInt64(&m, f, session);
  if (const auto* f = d->FindFieldByName("layout_id"); f && (flags & 4)) r->SetUInt64(&m, f, layout);
  if (const auto* f = d->FindFieldByName("wait_ms"))
    r->SetInt64(&m, f, std::max<int64_t>(-2, std::min<int64_t>(2, r->GetInt64(m, f))));
}

}  // namespace
}  // namespace kvtier

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  if (size < 2) return 0;
  World& w = TheWorld();
  const Method& method = kMethods[data[0] % (sizeof(kMethods) / sizeof(kMethods[0]))];
  const uint8_t flags = data[1];
  std::string bytes(reinterpret_cast<const char*>(data + 2), size - 2);
  auto m = method.make();
  const bool decodable = m->ParseFromString(bytes);
  if (decodable && !(flags & 1)) {
    Patch(*m, flags, w.client->session_id(), w.layout_id);
    bytes = m->SerializeAsString();
  }
  const std::string before = Visible(w);
  const grpc::Status st = Send(w, method.name, bytes);
  // gRPC's callback API answers a request it cannot decode with UNIMPLEMENTED (empty message) before
  // any handler runs; for bytes that do decode, that answer would be ours, and wrong.
  if (!decodable && st.error_code() == grpc::StatusCode::UNIMPLEMENTED) return 0;
  switch (st.error_code()) {
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      std::fprintf(stderr, "fuzz: %s answered %d: %s\n", method.name, st.error_code(), st.error_message().c_str());
      std::abort();
    default:
      break;
  }
  if (st.ok() && std::string(method.name) == "Prefetch") {
    // Let it finish, so that its pins do not show up in the next input's before/after comparison.
    v1::PrefetchResponse r;
    if (r.ParseFromString(last_response)) (void)w.client->GetPrefetch(r.prefetch_id(), 10000);
  }
  if (!st.ok()) {
    const std::string after = Visible(w);
    if (after != before) {
      std::fprintf(stderr, "fuzz: failed %s (%d: %s) changed the store\n", method.name, st.error_code(),
                   st.error_message().c_str());
      std::abort();
    }
  }
  return 0;
}

#ifdef KVTIER_FUZZ_STANDALONE
// Without libFuzzer: runs every file given (or in a directory given), then `-runs=N` random mutations of
// them (byte flips, inserts, truncations), bounded by `-max_total_time=S`.
#include <chrono>
#include <fstream>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  std::vector<std::string> corpus;
  long runs = 1000, seconds = 60;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("-runs=", 0) == 0) {
      runs = std::atol(a.c_str() + 6);
    } else if (a.rfind("-max_total_time=", 0) == 0) {
      seconds = std::atol(a.c_str() + 16);
    } else if (a[0] != '-') {
      std::vector<std::filesystem::path> files;
      if (std::filesystem::is_directory(a)) {
        for (const auto& e : std::filesystem::directory_iterator(a)) files.push_back(e.path());
      } else {
        files.push_back(a);
      }
      for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      }
    }
  }
  if (corpus.empty()) corpus.push_back(std::string("\x05\x00", 2));
  for (const auto& c : corpus) LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(c.data()), c.size());
  std::mt19937_64 rng(12345);
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  long done = 0;
  for (; done < runs && std::chrono::steady_clock::now() < end; ++done) {
    std::string s = corpus[rng() % corpus.size()];
    for (int k = 1 + rng() % 4; k > 0; --k) {
      const int op = rng() % 3;
      if (op == 0 && !s.empty()) s[rng() % s.size()] ^= static_cast<char>(1 << (rng() % 8));
      if (op == 1) s.insert(s.begin() + (s.empty() ? 0 : rng() % s.size()), static_cast<char>(rng()));
      if (op == 2 && s.size() > 2) s.resize(2 + rng() % (s.size() - 1));
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
  std::printf("standalone fuzz driver: %zu corpus inputs, %ld mutations\n", corpus.size(), done);
  return 0;
}
#endif
