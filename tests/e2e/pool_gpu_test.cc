// On a GPU machine: a kvtierd process and this test process share the daemon's GPU pool through the
// exported handle (CUDA VMM POSIX descriptors over the descriptor socket). The test reads blocks the
// daemon wrote, writes a block the daemon then serves, and launches kvtier's attention kernels on its own
// stream over the mapping, matching the daemon's Attend. Skips visibly without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "client/client.h"
#include "client/local_attention.h"
#include "client/prompt_kv.h"
#include "kernels/testing/kv_oracle.h"
#include "tests/e2e/process.h"

#if KVTIER_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;
using testing::ChildProcess;

TEST(PoolGpuTest, TwoProcessesShareTheGpuPool) {
#if !KVTIER_WITH_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no CUDA device";
  const auto dir = std::filesystem::temp_directory_path() / ("kvtier-pool-gpu-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string socket = (dir / "kvtierd.sock").string();
  ChildProcess daemon({testing::KvtierdBinary(), "--socket_path=" + socket, "--limits.gpu_pool_bytes=268435456"},
                      (dir / "kvtierd.log").string());
  const std::string error = testing::WaitForDaemon(daemon, socket, dir / "kvtierd.log");
  ASSERT_TRUE(error.empty()) << error;
  ClientOptions o;
  o.target = "unix:" + socket;
  auto c = Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  v1::LayoutSpec spec;
  spec.set_num_layers(2);
  spec.set_num_kv_heads(2);
  spec.set_head_dim(128);
  spec.set_block_size(16);
  spec.set_dtype(v1::ACTIVATION_DTYPE_FP16);
  auto reg = (*c)->RegisterLayout(spec);
  ASSERT_TRUE(reg.ok()) << reg.status();
  const LayoutShape shape{2, 2, 128, 16};
  auto act = PageGeometry::Uniform(shape, DefaultCodec(Format::kFp16, Operand::kKey),
                                   DefaultCodec(Format::kFp16, Operand::kValue));
  ASSERT_TRUE(act.ok());
  std::vector<int32_t> prompt(64);
  for (int i = 0; i < 64; ++i) prompt[i] = 4000 + i;
  auto w = WritePromptKv(**c, reg->layout_id(), shape, reg->activation_page_bytes(), prompt, [&](int b, uint8_t* page) {
    testing::FillActivationPage(*act, Format::kFp16, testing::BlockSeed(prompt, 16, b), page);
  });
  ASSERT_TRUE(w.ok()) << w.status();
  // A private block the daemon has written once (its chunk is committed), for the engine to overwrite.
  auto fresh = (*c)->Allocate(reg->layout_id(), 1);
  ASSERT_TRUE(fresh.ok());
  std::vector<uint64_t> fresh_ids{fresh->block_ids(0)};
  std::vector<std::string> zeros{std::string(reg->activation_page_bytes(), '\0')};
  ASSERT_TRUE((*c)->WriteBlocks(fresh_ids, zeros).ok());

  auto pool = (*c)->MapPool(reg->layout_id());
  ASSERT_TRUE(pool.ok()) << pool.status();
  const MappedPool& p = **pool;
  ASSERT_TRUE(p.on_gpu());
  ASSERT_EQ(cudaSetDevice(p.device()), cudaSuccess);
  auto hit = (*c)->Lookup(reg->layout_id(), prompt, true, false);
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(hit->blocks_size(), 4);
  // Read the daemon's pages through the mapping (fp16 resident pages are activation pages).
  std::string page(p.geometry().page_bytes(), '\0');
  for (int b = 0; b < 4; ++b) {
    ASSERT_EQ(cudaMemcpy(page.data(), p.page(hit->blocks(b).slot()), page.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(testing::CheckActivationPage(*act, Format::kFp16, testing::BlockSeed(prompt, 16, b),
                                           reinterpret_cast<const uint8_t*>(page.data()), 1e-3f)
                  .bad_values,
              0)
        << "block " << b;
  }
  // Write a page through the mapping; the daemon reads it back.
  std::vector<int32_t> other(16, 99);
  testing::FillActivationPage(*act, Format::kFp16, testing::BlockSeed(other, 16, 0),
                              reinterpret_cast<uint8_t*>(page.data()));
  ASSERT_EQ(cudaMemcpy(p.page(fresh->slots(0)), page.data(), page.size(), cudaMemcpyHostToDevice), cudaSuccess);
  auto back = (*c)->ReadBlocks(fresh_ids);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)[0], page);

  // In-engine attention on our stream equals the daemon's Attend.
  const int hq = 4, nq = 1;
  std::vector<uint16_t> q(static_cast<size_t>(nq) * hq * 128), local(q.size());
  for (size_t i = 0; i < q.size(); ++i) q[i] = FloatToHalf(std::sin(0.05f * i));
  void *dq = nullptr, *dout = nullptr;
  ASSERT_EQ(cudaMalloc(&dq, q.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, q.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  LocalAttendBatch b;
  b.layer = 1;
  b.num_q_heads = hq;
  b.seq_lens = {64};
  b.q_indptr = {0, nq};
  for (const auto& blk : hit->blocks()) b.block_table.push_back(blk.slot());
  b.block_table_stride = 4;
  b.q = dq;
  b.out = dout;
  LocalAttention attention(p);
  ASSERT_TRUE(attention.Run(b, stream).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(local.data(), dout, local.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  v1::AttendRequest req;
  req.set_layout_id(reg->layout_id());
  req.set_layer(1);
  req.set_num_q_heads(hq);
  auto* seq = req.add_sequences();
  for (const auto& blk : hit->blocks()) seq->add_block_ids(blk.block_id());
  seq->set_seq_len(64);
  seq->set_num_queries(nq);
  req.set_queries(std::string(reinterpret_cast<const char*>(q.data()), q.size() * 2));
  auto daemon_out = (*c)->Attend(req);
  ASSERT_TRUE(daemon_out.ok()) << daemon_out.status();
  const auto* out = reinterpret_cast<const uint16_t*>(daemon_out->output().data());
  for (size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(HalfToFloat(local[i]), HalfToFloat(out[i]), 2e-3) << i;
  cudaStreamDestroy(stream);
  cudaFree(dq);
  cudaFree(dout);
  pool->reset();
  c->reset();
  daemon.Signal(SIGTERM);
  EXPECT_EQ(daemon.Wait(), 0);
  std::filesystem::remove_all(dir);
#endif
}

}  // namespace
}  // namespace kvtier
