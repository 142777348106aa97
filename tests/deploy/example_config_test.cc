// The configurations shipped in deploy/ load through the daemon's own loader, pass its validation, and
// carry the settings the deployment around them relies on (socket and SSD paths, metrics listener).
#include <gtest/gtest.h>

#include <string>

#include "daemon/config.h"
#include "daemon/layout_spec.h"

namespace kvtier {
namespace {

struct Shipped {
  const char* path;         // relative to the source tree
  const char* socket_path;  // where the unit / DaemonSet expects the socket
  const char* ssd_dir;      // the persistent directory the unit / DaemonSet provides
  const char* metrics_address;
};

class ShippedConfig : public ::testing::TestWithParam<Shipped> {};

TEST_P(ShippedConfig, LoadsValidatesAndMatchesItsDeployment) {
  const Shipped& s = GetParam();
  auto config = LoadConfigFile(std::string(KVTIER_SOURCE_DIR) + "/" + s.path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(ValidateConfig(*config).ok()) << ValidateConfig(*config);
  auto policy = ToPrecisionPolicy(config->default_policy());
  EXPECT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ(config->socket_path(), s.socket_path);
  EXPECT_EQ(config->ssd_dir(), s.ssd_dir);
  EXPECT_EQ(config->metrics_address(), s.metrics_address);
  EXPECT_GT(config->limits().ssd_tier_bytes(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Deploy, ShippedConfig,
                         ::testing::Values(Shipped{"deploy/kvtierd.conf", "/run/kvtier/kvtierd.sock",
                                                   "/var/lib/kvtier/ssd", "127.0.0.1:9464"},
                                           Shipped{"deploy/k8s/base/kvtierd.conf", "/run/kvtier/kvtierd.sock",
                                                   "/var/lib/kvtier/ssd", "0.0.0.0:9464"},
                                           Shipped{"deploy/k8s/overlays/dev/kvtierd.conf", "/run/kvtier/kvtierd.sock",
                                                   "/var/lib/kvtier/ssd", "0.0.0.0:9464"},
                                           Shipped{"deploy/k8s/overlays/h100/kvtierd.conf", "/run/kvtier/kvtierd.sock",
                                                   "/var/lib/kvtier/ssd", "0.0.0.0:9464"}));

TEST(ShippedConfigLoader, RejectsAnUnknownFieldWithItsLine) {
  // The loader the example relies on is strict: a typo is an error, not a silently ignored setting.
  const std::string path = ::testing::TempDir() + "/typo.conf";
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("socket_path: \"/run/kvtier/kvtierd.sock\"\nmetrics_adress: \"127.0.0.1:9464\"\n", f);
  std::fclose(f);
  auto config = LoadConfigFile(path);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("line 2"), absl::string_view::npos) << config.status();
}

}  // namespace
}  // namespace kvtier
