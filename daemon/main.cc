// kvtierd: the kvtier daemon.
//   kvtierd [--config=FILE] [--field=value ...]
// Runs on the built-in default configuration when given no file; any DaemonConfig scalar field can be
// overridden with --path.to.field=value. SIGTERM/SIGINT shut down gracefully; with systemd
// (Type=notify) it reports READY=1, STOPPING=1 and watchdog keep-alives.
#include <systemd/sd-daemon.h>

#include <csignal>
#include <cstdio>
#include <thread>

#include "absl/strings/match.h"
#include "client/absl_runtime.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "tiering/log.h"

namespace {

std::atomic<bool> g_stop{false};

void WatchdogLoop() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return;
  while (!g_stop.load()) {
    sd_notify(0, "WATCHDOG=1");
    for (uint64_t waited = 0; waited < usec / 2 && !g_stop.load(); waited += 100000) usleep(100000);
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvtier;
  std::string config_path;
  std::vector<std::string> flags;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: kvtierd [--config=FILE] [--field=value ...]  (fields of kvtier.v1.DaemonConfig)\n");
      return 0;
    }
    if (absl::StartsWith(a, "--config=")) {
      config_path = a.substr(9);
    } else if (a == "--verbose") {
      SetLogLevel(LogLevel::kDebug);
    } else {
      flags.push_back(a);
    }
  }
  auto config = config_path.empty() ? absl::StatusOr<kvtier::v1::DaemonConfig>(DefaultConfig())
                                    : LoadConfigFile(config_path);
  if (config.ok()) {
    if (auto st = ApplyFlags(flags, &*config); !st.ok()) config = st;
  }
  if (config.ok()) {
    if (auto st = ValidateConfig(*config); !st.ok()) config = st;
  }
  if (!config.ok()) {
    std::fprintf(stderr, "kvtierd: invalid configuration: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }

  ConfigureAbslForLowLatency();  // before gRPC starts its threads (client/absl_runtime.h)

  // Signals are taken synchronously by this thread; every thread started later inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto server = KvTierServer::Start(*config);
  if (!server.ok()) {
    std::fprintf(stderr, "kvtierd: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  sd_notify(0, "READY=1\nSTATUS=serving");
  std::thread watchdog(WatchdogLoop);

  int sig = 0;
  sigwait(&signals, &sig);
  KVTIER_LOG(kInfo, "signal") << "signal=" << (sig == SIGTERM ? "SIGTERM" : "SIGINT") << " action=shutdown";
  sd_notify(0, "STOPPING=1\nSTATUS=draining");
  g_stop = true;
  (*server)->Shutdown();
  server->reset();
  watchdog.join();
  return 0;
}
