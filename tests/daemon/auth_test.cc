// Tenant token file, TLS on the TCP listener (self-signed certificates made by the test with openssl),
// and their failure paths: bad tokens are UNAUTHENTICATED, invalid files and TLS settings stop the
// daemon at start with a clear message, plaintext or wrongly trusting clients cannot talk to a TLS port,
// pool handles never go over TCP.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "client/client.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "tests/daemon/daemon_test_util.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

using testing::SmallLayout;

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTestDir("kvtier-auth-");
    config_ = DefaultConfig();
    config_.set_socket_path((dir_ / "k.sock").string());
    config_.mutable_limits()->set_gpu_pool_bytes(32ull << 20);
    config_.set_admin_token("admin-secret-0123456789");
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string WriteFile(const std::string& name, const std::string& text, int mode = 0600) {
    const auto p = dir_ / name;
    std::ofstream(p) << text;
    ::chmod(p.c_str(), mode);
    return p.string();
  }
  absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& tenant, const std::string& token,
                                                  ClientOptions o = {}) {
    if (o.target.empty()) o.target = "unix:" + config_.socket_path();
    o.tenant = tenant;
    o.token = token;
    if (o.connect_timeout_ms == ClientOptions{}.connect_timeout_ms) o.connect_timeout_ms = 3000;
    return Client::Connect(o);
  }
  // A self-signed certificate for localhost / 127.0.0.1.
  void MakeCert(const std::string& stem) {
    const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                            "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
                            (dir_ / (stem + ".key")).string() + " -out " + (dir_ / (stem + ".pem")).string() +
                            " >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "openssl failed";
  }

  std::filesystem::path dir_;
  v1::DaemonConfig config_;
  std::unique_ptr<KvTierServer> server_;
};

TEST_F(AuthTest, TheTokenFileNamesTheTenant) {
  config_.set_tenant_token_file(WriteFile("tokens", "# engines\n"
                                                    "alpha-token-0123456789 alpha pool_access\n"
                                                    "beta-token-0123456789  beta   # no pool access\n"));
  auto s = KvTierServer::Start(config_);
  ASSERT_TRUE(s.ok()) << s.status();
  server_ = std::move(*s);
  auto alpha = Connect("", "alpha-token-0123456789");
  ASSERT_TRUE(alpha.ok()) << alpha.status();
  auto beta = Connect("beta", "beta-token-0123456789");
  ASSERT_TRUE(beta.ok()) << beta.status();
  EXPECT_FALSE((*alpha)->is_admin());
  // Bad credentials: unknown token, a token naming another tenant, no token.
  EXPECT_EQ(Connect("alpha", "alpha-token-012345678X").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Connect("alpha", "beta-token-0123456789").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Connect("alpha", "").status().code(), absl::StatusCode::kUnauthenticated);
  auto admin = Connect("", "admin-secret-0123456789");
  ASSERT_TRUE(admin.ok());
  EXPECT_TRUE((*admin)->is_admin());
  // The token's tenant is the namespace: beta does not see alpha's block.
  auto reg = (*alpha)->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  auto blk = (*alpha)->Allocate(reg->layout_id(), 1);
  ASSERT_TRUE(blk.ok());
  v1::CommitEntry e;
  e.set_block_id(blk->block_ids(0));
  for (int i = 0; i < 16; ++i) e.add_tokens(i);
  ASSERT_TRUE((*alpha)->Commit(std::span<const v1::CommitEntry>(&e, 1)).ok());
  std::vector<int32_t> tokens(e.tokens().begin(), e.tokens().end());
  EXPECT_EQ((*alpha)->Lookup(reg->layout_id(), tokens, false, false)->blocks_size(), 1);
  EXPECT_EQ((*beta)->Lookup(reg->layout_id(), tokens, false, false)->blocks_size(), 0);
  // pool_access from the file.
  EXPECT_TRUE((*alpha)->GetPoolHandle(reg->layout_id()).ok());
  EXPECT_EQ((*beta)->GetPoolHandle(reg->layout_id()).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(AuthTest, InvalidTokenFilesStopTheDaemonAtStart) {
  struct Case {
    std::string text;
    int mode;
    absl::StatusCode code;
    std::string says;
  };
  const Case cases[] = {
      {"alpha-token-0123456789 alpha\n", 0644, absl::StatusCode::kPermissionDenied, "group or others"},
      {"short alpha\n", 0600, absl::StatusCode::kInvalidArgument, ":1: token shorter"},
      {"alpha-token-0123456789 alpha\nalpha-token-0123456789 beta\n", 0600, absl::StatusCode::kInvalidArgument,
       ":2: token listed twice"},
      {"alpha-token-0123456789 alpha admin\n", 0600, absl::StatusCode::kInvalidArgument, "unknown option"},
      {"# nothing\n", 0600, absl::StatusCode::kInvalidArgument, "no tokens"},
  };
  for (const Case& c : cases) {
    config_.set_tenant_token_file(WriteFile("tokens", c.text, c.mode));
    auto s = KvTierServer::Start(config_);
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_EQ(s.status().code(), c.code) << s.status();
    EXPECT_NE(s.status().message().find(c.says), std::string::npos) << s.status();
  }
  config_.set_tenant_token_file((dir_ / "missing").string());
  EXPECT_EQ(KvTierServer::Start(config_).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AuthTest, TlsOnTheTcpListener) {
  MakeCert("server");
  MakeCert("other");
  MakeCert("client");
  config_.set_tcp_address("127.0.0.1:0");
  config_.set_tls_cert_file((dir_ / "server.pem").string());
  config_.set_tls_key_file((dir_ / "server.key").string());
  config_.set_tls_client_ca_file((dir_ / "client.pem").string());  // mutual TLS
  auto s = KvTierServer::Start(config_);
  ASSERT_TRUE(s.ok()) << s.status();
  server_ = std::move(*s);
  ASSERT_GT(server_->tcp_port(), 0);
  ClientOptions o;
  o.target = "127.0.0.1:" + std::to_string(server_->tcp_port());
  o.tls_ca_file = (dir_ / "server.pem").string();
  o.tls_cert_file = (dir_ / "client.pem").string();
  o.tls_key_file = (dir_ / "client.key").string();
  o.tls_server_name = "localhost";
  auto c = Connect("", "admin-secret-0123456789", o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->Stats().ok());
  auto reg = (*c)->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok());
  // Pool handles are for local sessions only.
  EXPECT_EQ((*c)->GetPoolHandle(reg->layout_id()).status().code(), absl::StatusCode::kFailedPrecondition);
  // Plaintext, a client that trusts another CA, and one without a client certificate cannot connect.
  ClientOptions plain;
  plain.target = o.target;
  plain.connect_timeout_ms = 1000;  // these never connect: do not wait long for it
  o.connect_timeout_ms = 1000;
  EXPECT_FALSE(Connect("", "admin-secret-0123456789", plain).ok());
  ClientOptions wrong_ca = o;
  wrong_ca.tls_ca_file = (dir_ / "other.pem").string();
  EXPECT_FALSE(Connect("", "admin-secret-0123456789", wrong_ca).ok());
  ClientOptions no_cert = o;
  no_cert.tls_cert_file.clear();
  no_cert.tls_key_file.clear();
  EXPECT_FALSE(Connect("", "admin-secret-0123456789", no_cert).ok());
  // The unix socket stays plaintext.
  EXPECT_TRUE(Connect("", "admin-secret-0123456789").ok());
}

TEST_F(AuthTest, InvalidTlsSettingsAreRejected) {
  v1::DaemonConfig c = config_;
  c.set_tcp_address("127.0.0.1:0");
  c.set_tls_cert_file((dir_ / "cert.pem").string());
  EXPECT_EQ(ValidateConfig(c).code(), absl::StatusCode::kInvalidArgument);  // no key
  c.set_tls_key_file((dir_ / "key.pem").string());
  EXPECT_TRUE(ValidateConfig(c).ok());
  EXPECT_EQ(KvTierServer::Start(c).status().code(), absl::StatusCode::kFailedPrecondition);  // unreadable
  c.clear_tcp_address();
  EXPECT_EQ(ValidateConfig(c).code(), absl::StatusCode::kInvalidArgument);  // TLS without TCP
  c = config_;
  c.set_tls_client_ca_file("ca.pem");
  EXPECT_EQ(ValidateConfig(c).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
