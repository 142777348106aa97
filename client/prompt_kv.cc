#include "client/prompt_kv.h"

#include <algorithm>

namespace kvtier {

absl::StatusOr<WrittenPrompt> WritePromptKv(Client& client, uint64_t layout_id, const LayoutShape& shape,
                                            uint64_t activation_page_bytes, std::span<const int32_t> prompt,
                                            const PageFiller& fill, int start_block, const std::string& parent_key,
                                            uint64_t max_batch_bytes) {
  const int bs = shape.block_size;
  const int full = static_cast<int>(prompt.size()) / bs;
  const int total = (static_cast<int>(prompt.size()) + bs - 1) / bs;
  WrittenPrompt out;
  if (total <= start_block) return out;
  const int per_batch = static_cast<int>(std::max<uint64_t>(1, max_batch_bytes / activation_page_bytes));
  std::string parent = parent_key;
  for (int first = start_block; first < total; first += per_batch) {
    const int n = std::min(per_batch, total - first);
    auto alloc = client.Allocate(layout_id, n);
    if (!alloc.ok()) return alloc.status();
    std::vector<uint64_t> ids(alloc->block_ids().begin(), alloc->block_ids().end());
    std::vector<std::string> pages(n, std::string(activation_page_bytes, '\0'));
    for (int i = 0; i < n; ++i) fill(first + i, reinterpret_cast<uint8_t*>(pages[i].data()));
    if (auto st = client.WriteBlocks(ids, pages); !st.ok()) return st;
    std::vector<kvtier::v1::CommitEntry> entries;
    for (int i = 0; i < n && first + i < full; ++i) {
      auto& e = entries.emplace_back();
      e.set_block_id(ids[i]);
      if (i == 0) {
        e.set_parent_key(parent);  // the last key of the previous batch (empty for block 0)
      } else {
        e.set_chain_previous(true);
      }
      const int b = first + i;
      e.mutable_tokens()->Add(prompt.begin() + b * bs, prompt.begin() + (b + 1) * bs);
    }
    if (!entries.empty()) {
      auto c = client.Commit(entries);
      if (!c.ok()) return c.status();
      for (const auto& r : c->results()) {
        out.block_ids.push_back(r.block_id());
        out.keys.push_back(r.key());
        out.deduplicated += r.deduplicated();
      }
      parent = c->results(c->results_size() - 1).key();
    }
    if (first + n > full) out.tail_block_id = ids[n - 1];
  }
  return out;
}

absl::StatusOr<ReadPrefix> ReadPrefixKv(Client& client, uint64_t layout_id, uint64_t activation_page_bytes,
                                        std::span<const int32_t> prompt, uint64_t max_batch_bytes) {
  ReadPrefix out;
  auto hit = client.Lookup(layout_id, prompt, /*pin=*/true, /*promote=*/true);
  if (!hit.ok()) return hit.status();
  out.lookup = *hit;
  const int per_batch = static_cast<int>(std::max<uint64_t>(1, max_batch_bytes / activation_page_bytes));
  std::vector<uint64_t> ids;
  for (const auto& b : hit->blocks()) ids.push_back(b.block_id());
  for (size_t first = 0; first < ids.size(); first += per_batch) {
    const size_t n = std::min<size_t>(per_batch, ids.size() - first);
    auto pages = client.ReadBlocks(std::span<const uint64_t>(ids.data() + first, n));
    if (!pages.ok()) return pages.status();
    for (auto& p : *pages) out.pages.push_back(std::move(p));
  }
  return out;
}

}  // namespace kvtier
