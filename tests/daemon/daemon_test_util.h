// Helpers shared by the daemon tests that start a real in-process server.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "client/client.h"
#include "kvtier/v1/kvtier.pb.h"

namespace kvtier::testing {

// A small fp16 layout: 2 layers, 2 KV heads of 64, block 16.
inline kvtier::v1::LayoutSpec SmallLayout() {
  kvtier::v1::LayoutSpec l;
  l.set_num_layers(2);
  l.set_num_kv_heads(2);
  l.set_head_dim(64);
  l.set_block_size(16);
  l.set_dtype(kvtier::v1::ACTIVATION_DTYPE_FP16);
  return l;
}

// A fresh directory for the running test (socket, SSD tier), named after it; the caller removes it.
inline std::filesystem::path MakeTestDir(const std::string& prefix) {
  const auto dir = std::filesystem::temp_directory_path() /
                   (prefix + std::to_string(::getpid()) + "-" +
                    ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A client of the server listening on `socket_path`, as `tenant` with `token`; null (and a test failure)
// when it cannot connect.
inline std::unique_ptr<Client> ConnectAs(const std::string& socket_path, const std::string& tenant,
                                         const std::string& token) {
  ClientOptions o;
  o.target = "unix:" + socket_path;
  o.tenant = tenant;
  o.token = token;
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

}  // namespace kvtier::testing
