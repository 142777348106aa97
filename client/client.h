// kvtier::Client: an engine worker's (or kvtierctl's) connection to kvtierd.
//
// Connect attaches a session and keeps its Attach stream open on a background thread; the session lives
// until the Client is destroyed (or the process dies, which closes the socket): the daemon then releases
// every pin and private block of the session. All methods are thread-safe and return the daemon's
// gRPC status as an absl::Status with the same code and message.
#pragma once

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "kvtier/v1/kvtier.grpc.pb.h"

namespace kvtier {

struct ClientOptions {
  std::string target;          // "unix:/run/kvtier/kvtierd.sock" or "host:port"; empty: the default socket
  std::string tenant;          // empty: "default"
  std::string token;           // tenant or admin credential
  std::string client_name = "kvtier-client";
  int64_t max_message_bytes = 64ll << 20;
  int64_t connect_timeout_ms = 5000;
};

// The default target: unix socket of DefaultSocketPath() rules ($KVTIER_SOCKET overrides).
std::string DefaultTarget();

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  uint64_t session_id() const { return session_id_; }
  bool is_admin() const { return is_admin_; }

  absl::StatusOr<kvtier::v1::RegisterLayoutResponse> RegisterLayout(const kvtier::v1::LayoutSpec& layout);
  absl::StatusOr<kvtier::v1::AllocateResponse> Allocate(uint64_t layout_id, int count);
  absl::Status WriteBlocks(std::span<const uint64_t> block_ids, std::span<const std::string> pages);
  absl::StatusOr<std::vector<std::string>> ReadBlocks(std::span<const uint64_t> block_ids);
  absl::StatusOr<kvtier::v1::CommitResponse> Commit(std::span<const kvtier::v1::CommitEntry> entries);
  absl::StatusOr<kvtier::v1::LookupResponse> Lookup(uint64_t layout_id, std::span<const int32_t> tokens, bool pin,
                                                    bool promote);
  absl::Status Release(std::span<const uint64_t> block_ids);
  absl::StatusOr<kvtier::v1::StatsResponse> Stats();
  // Daemon-served paged attention; `req.session_id` is filled in.
  absl::StatusOr<kvtier::v1::AttendResponse> Attend(kvtier::v1::AttendRequest req);
  absl::StatusOr<kvtier::v1::EvictResponse> Evict(kvtier::v1::Tier from, int64_t max_blocks);
  absl::StatusOr<kvtier::v1::ListSessionsResponse> ListSessions();
  absl::StatusOr<kvtier::v1::SetTierLimitsResponse> SetTierLimits(const kvtier::v1::TierLimits& limits);
  // Calibration and static scales (admin; docs/calibration.md).
  absl::Status StartCalibration(uint64_t layout_id);
  absl::StatusOr<kvtier::v1::StopCalibrationResponse> StopCalibration();
  absl::StatusOr<kvtier::v1::ExportCalibrationResponse> ExportCalibration(uint64_t layout_id);
  absl::StatusOr<kvtier::v1::LoadStaticScalesResponse> LoadStaticScales(uint64_t layout_id, std::string scales_file,
                                                                        const kvtier::v1::StaticScalesPolicy& policy);

  kvtier::v1::KvTier::Stub& stub() { return *stub_; }

 private:
  Client() = default;
  void ReadEvents();

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<kvtier::v1::KvTier::Stub> stub_;
  grpc::ClientContext attach_ctx_;
  std::unique_ptr<grpc::ClientReader<kvtier::v1::SessionEvent>> attach_;
  std::thread events_;
  uint64_t session_id_ = 0;
  bool is_admin_ = false;
};

}  // namespace kvtier
