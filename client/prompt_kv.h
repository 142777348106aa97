// Writing and reading a prompt's KV through a Client: the block-level protocol an engine follows.
//   WritePromptKv: allocate one block per block_size tokens, write each block's activation page,
//                  commit the full blocks as one chain (each names its parent's key), and keep the
//                  trailing partial block private.
//   ReadPrefixKv:  look the prompt up with promote (hits are pinned and paged in to the GPU tier) and
//                  read the matched blocks back as activation pages.
// Requests are batched so that no message exceeds `max_batch_bytes`.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "kernels/page_geometry.h"

namespace kvtier {

// Fills the activation page of block `block_index` (activation_page_bytes bytes).
using PageFiller = std::function<void(int block_index, uint8_t* page)>;

struct WrittenPrompt {
  std::vector<uint64_t> block_ids;  // committed full blocks, in order (deduplicated ids where shared)
  std::vector<std::string> keys;    // their 16-byte chained keys
  int deduplicated = 0;             // blocks some other session had already published
  uint64_t tail_block_id = 0;       // the private partial block, 0 if none
};

// Writes blocks start_block.. of the prompt; `parent_key` is the key of block start_block-1 (empty when
// start_block is 0), e.g. the last block of a prefix hit.
absl::StatusOr<WrittenPrompt> WritePromptKv(Client& client, uint64_t layout_id, const LayoutShape& shape,
                                            uint64_t activation_page_bytes, std::span<const int32_t> prompt,
                                            const PageFiller& fill, int start_block = 0,
                                            const std::string& parent_key = "",
                                            uint64_t max_batch_bytes = 32ull << 20);

struct ReadPrefix {
  kvtier::v1::LookupResponse lookup;
  std::vector<std::string> pages;  // one activation page per matched block
};

absl::StatusOr<ReadPrefix> ReadPrefixKv(Client& client, uint64_t layout_id, uint64_t activation_page_bytes,
                                        std::span<const int32_t> prompt, uint64_t max_batch_bytes = 32ull << 20);

}  // namespace kvtier
