#include "tiering/eviction_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvtier {

void EvictionPolicy::Rank(std::vector<EvictionCandidate>& c, size_t n) {
  Score(c);
  auto order = [](const EvictionCandidate& a, const EvictionCandidate& b) {
    if (a.priority_class != b.priority_class) return a.priority_class < b.priority_class;
    if (a.leaf != b.leaf) return a.leaf;
    if (a.score != b.score) return a.score < b.score;
    return a.id < b.id;
  };
  if (n < c.size()) {
    std::partial_sort(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(n), c.end(), order);
  } else {
    std::sort(c.begin(), c.end(), order);
    n = c.size();
  }
  Chosen(std::span<const EvictionCandidate>(c.data(), n));
}

namespace {

// Least recently used: a block's score is the tick of its last insert or use.
class LruPolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "lru"; }
  void OnInsert(const PolicyBlockInfo& b) override { tick_[b.id] = ++clock_; }
  void OnAccess(uint64_t id) override {
    if (auto it = tick_.find(id); it != tick_.end()) it->second = ++clock_;
  }
  void OnRemove(uint64_t id, bool) override { tick_.erase(id); }
  size_t tracked() const override { return tick_.size(); }

 protected:
  void Score(std::vector<EvictionCandidate>& c) override {
    for (auto& x : c) {
      auto it = tick_.find(x.id);
      x.score = it == tick_.end() ? 0 : static_cast<double>(it->second);
    }
  }

 private:
  uint64_t clock_ = 0;
  absl::flat_hash_map<uint64_t, uint64_t> tick_;
};

// Segmented LRU with a protected segment capped at 80 % of the tier's blocks.
class SlruPolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "slru"; }
  void OnInsert(const PolicyBlockInfo& b) override { state_[b.id] = {++clock_, false}; }
  void OnAccess(uint64_t id) override {
    auto it = state_.find(id);
    if (it == state_.end()) return;
    it->second.tick = ++clock_;
    if (!it->second.is_protected) {
      it->second.is_protected = true;
      ++protected_;
    }
  }
  void OnRemove(uint64_t id, bool) override {
    auto it = state_.find(id);
    if (it == state_.end()) return;
    if (it->second.is_protected) --protected_;
    state_.erase(it);
  }
  size_t tracked() const override { return state_.size(); }

 protected:
  void Score(std::vector<EvictionCandidate>& c) override {
    const auto cap = static_cast<size_t>(std::ceil(kProtectedShare * static_cast<double>(state_.size())));
    if (protected_ > cap) {  // the least recent protected blocks fall back to probation
      std::vector<std::pair<uint64_t, uint64_t>> prot;  // (tick, id)
      for (const auto& [id, s] : state_)
        if (s.is_protected) prot.push_back({s.tick, id});
      std::sort(prot.begin(), prot.end());
      for (size_t i = 0; i < protected_ - cap; ++i) state_[prot[i].second].is_protected = false;
      protected_ = cap;
    }
    for (auto& x : c) {
      auto it = state_.find(x.id);
      if (it == state_.end()) {
        x.score = 0;
        continue;
      }
      x.score = (it->second.is_protected ? kProtectedBase : 0.0) + static_cast<double>(it->second.tick);
    }
  }

 private:
  static constexpr double kProtectedShare = 0.8;
  static constexpr double kProtectedBase = 4503599627370496.0;  // 2^52: above any tick
  struct State {
    uint64_t tick;
    bool is_protected;
  };
  uint64_t clock_ = 0;
  size_t protected_ = 0;
  absl::flat_hash_map<uint64_t, State> state_;
};

// Adaptive replacement cache over the tier's blocks, with ghost lists of evicted keys.
class ArcPolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "arc"; }
  void OnInsert(const PolicyBlockInfo& b) override {
    State s{b.key, ++clock_, 1};
    const double b1 = static_cast<double>(ghost1_.size()), b2 = static_cast<double>(ghost2_.size());
    if (ghost1_.erase(b.key) > 0) {  // evicted from T1 too early: grow T1's target
      p_ = std::min(static_cast<double>(capacity_), p_ + std::max(b2 / std::max(b1, 1.0), 1.0));
      s.list = 2;
    } else if (ghost2_.erase(b.key) > 0) {  // evicted from T2 too early: shrink T1's target
      p_ = std::max(0.0, p_ - std::max(b1 / std::max(b2, 1.0), 1.0));
      s.list = 2;
    }
    if (s.list == 1) ++t1_;
    state_[b.id] = s;
    capacity_ = std::max(capacity_, state_.size());
  }
  void OnAccess(uint64_t id) override {
    auto it = state_.find(id);
    if (it == state_.end()) return;
    it->second.tick = ++clock_;
    if (it->second.list == 1) {
      it->second.list = 2;
      --t1_;
    }
  }
  void OnRemove(uint64_t id, bool evicted) override {
    auto it = state_.find(id);
    if (it == state_.end()) return;
    if (it->second.list == 1) --t1_;
    if (evicted) Remember(it->second.list == 1 ? ghost1_ : ghost2_, it->second.list == 1 ? order1_ : order2_,
                          it->second.key);
    state_.erase(it);
  }
  size_t tracked() const override { return state_.size(); }

 protected:
  void Score(std::vector<EvictionCandidate>& c) override {
    // REPLACE, repeated: take T1's LRU while T1 is above its target p, else T2's LRU.
    std::vector<std::pair<uint64_t, size_t>> l1, l2;  // (tick, index in c)
    for (size_t i = 0; i < c.size(); ++i) {
      auto it = state_.find(c[i].id);
      if (it == state_.end() || it->second.list == 1) {
        l1.push_back({it == state_.end() ? 0 : it->second.tick, i});
      } else {
        l2.push_back({it->second.tick, i});
      }
    }
    std::sort(l1.begin(), l1.end());
    std::sort(l2.begin(), l2.end());
    size_t a = 0, b = 0;
    double t1 = static_cast<double>(t1_);
    for (size_t rank = 0; rank < c.size(); ++rank) {
      const bool take1 = a < l1.size() && (b >= l2.size() || t1 > p_ || (t1 == 0 && p_ == 0));
      if (take1) {
        c[l1[a++].second].score = static_cast<double>(rank);
        t1 -= 1;
      } else {
        c[l2[b++].second].score = static_cast<double>(rank);
      }
    }
  }

 private:
  struct State {
    BlockKey key;
    uint64_t tick;
    int list;  // 1: T1 (seen once), 2: T2 (seen again)
  };
  void Remember(absl::flat_hash_set<BlockKey>& ghost, std::deque<BlockKey>& order, const BlockKey& key) {
    if (ghost.insert(key).second) order.push_back(key);
    const size_t cap = std::max<size_t>(capacity_, 64);
    // (A key that left `ghost` on a ghost hit stays in `order` until it reaches the front: harmless.)
    while (order.size() > cap) {
      ghost.erase(order.front());
      order.pop_front();
    }
  }
  uint64_t clock_ = 0;
  double p_ = 0;          // target size of T1
  size_t t1_ = 0;         // blocks in T1
  size_t capacity_ = 0;   // the most blocks the tier has held (ARC's c)
  absl::flat_hash_map<uint64_t, State> state_;
  absl::flat_hash_set<BlockKey> ghost1_, ghost2_;
  std::deque<BlockKey> order1_, order2_;
};

// GreedyDual-Size-Frequency: H = L + uses * cost / bytes; the lowest H goes; L rises to the victims' H.
class CostPolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "cost"; }
  void OnInsert(const PolicyBlockInfo& b) override {
    State s{std::max(b.recompute_cost, 1e-9), static_cast<double>(std::max<uint64_t>(b.bytes, 1)), 1, 0};
    s.h = l_ + s.uses * s.cost / s.bytes * kScale;
    state_[b.id] = s;
  }
  void OnAccess(uint64_t id) override {
    auto it = state_.find(id);
    if (it == state_.end()) return;
    State& s = it->second;
    s.uses += 1;
    s.h = l_ + s.uses * s.cost / s.bytes * kScale;
  }
  void OnRemove(uint64_t id, bool) override { state_.erase(id); }
  size_t tracked() const override { return state_.size(); }

 protected:
  void Score(std::vector<EvictionCandidate>& c) override {
    for (auto& x : c) {
      auto it = state_.find(x.id);
      x.score = it == state_.end() ? 0 : it->second.h;
    }
  }
  void Chosen(std::span<const EvictionCandidate> victims) override {
    for (const auto& v : victims) l_ = std::max(l_, v.score);
  }

 private:
  static constexpr double kScale = 1 << 20;  // cost per MiB: keeps H in a readable range
  struct State {
    double cost, bytes, uses, h;
  };
  double l_ = 0;
  absl::flat_hash_map<uint64_t, State> state_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name) {
  if (name == "lru" || name.empty()) return std::unique_ptr<EvictionPolicy>(new LruPolicy());
  if (name == "slru") return std::unique_ptr<EvictionPolicy>(new SlruPolicy());
  if (name == "arc") return std::unique_ptr<EvictionPolicy>(new ArcPolicy());
  if (name == "cost") return std::unique_ptr<EvictionPolicy>(new CostPolicy());
  return absl::InvalidArgumentError(
      absl::StrCat("unknown eviction policy '", std::string(name), "' (expected lru, slru, arc or cost)"));
}

}  // namespace kvtier
