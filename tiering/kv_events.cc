#include "tiering/kv_events.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace kvtier {

const char* KvEventTypeName(KvEventType t) {
  switch (t) {
    case KvEventType::kStored: return "stored";
    case KvEventType::kMoved: return "moved";
    case KvEventType::kRemoved: return "removed";
  }
  return "?";
}

const char* RemoveReasonName(RemoveReason r) {
  switch (r) {
    case RemoveReason::kEvicted: return "evicted";
    case RemoveReason::kInvalidated: return "invalidated";
    case RemoveReason::kCorrupt: return "corrupt";
    case RemoveReason::kWriteFailed: return "write_failed";
    case RemoveReason::kAdmission: return "admission";
    case RemoveReason::kQuota: return "quota";
  }
  return "?";
}

KvEventLog::KvEventLog(size_t capacity) : capacity_(std::max<size_t>(capacity, 16)) {
  MutexLock lock(&mu_);
  ring_.resize(capacity_);
}

uint64_t KvEventLog::Append(KvEvent e) {
  e.time_unix_ns = absl::GetCurrentTimeNanos();
  MutexLock lock(&mu_);  // Unlock wakes waiting readers
  e.seq = next_seq_++;
  const uint64_t seq = e.seq;
  ring_[seq % capacity_] = std::move(e);
  return seq;
}

uint64_t KvEventLog::next_seq() const {
  MutexLock lock(&mu_);
  return next_seq_;
}

void KvEventLog::WakeAll() {
  MutexLock lock(&mu_);
  ++wake_generation_;
}

uint64_t KvEventLog::AddConsumer(std::string name) {
  MutexLock lock(&mu_);
  const uint64_t id = next_consumer_++;
  consumers_[id] = {std::move(name), next_seq_, 0};
  return id;
}

void KvEventLog::UpdateConsumer(uint64_t id, uint64_t cursor, uint64_t lost) {
  MutexLock lock(&mu_);
  auto it = consumers_.find(id);
  if (it == consumers_.end()) return;
  it->second.cursor = cursor;
  it->second.lost += lost;
}

void KvEventLog::RemoveConsumer(uint64_t id) {
  MutexLock lock(&mu_);
  consumers_.erase(id);
}

std::vector<KvEventLog::ConsumerInfo> KvEventLog::Consumers() const {
  MutexLock lock(&mu_);
  std::vector<ConsumerInfo> out;
  for (const auto& [id, c] : consumers_)
    out.push_back({c.name, next_seq_ > c.cursor ? next_seq_ - c.cursor : 0, c.lost});
  std::sort(out.begin(), out.end(), [](const ConsumerInfo& a, const ConsumerInfo& b) { return a.name < b.name; });
  return out;
}

KvEventLog::ReadResult KvEventLog::Read(uint64_t cursor, size_t max_events,
                                        const std::function<bool(const KvEvent&)>& filter,
                                        std::chrono::milliseconds wait) {
  ReadResult out;
  MutexLock lock(&mu_);
  if (cursor == 0) cursor = next_seq_;
  if (cursor > next_seq_) cursor = next_seq_;  // a cursor from the future (another daemon run): from now on
  const uint64_t generation = wake_generation_;
  if (cursor == next_seq_ && wait.count() > 0) {
    mu_.AwaitWithTimeout(
        [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return next_seq_ > cursor || wake_generation_ != generation; },
        wait);
  }
  const uint64_t oldest = next_seq_ > capacity_ ? next_seq_ - capacity_ : 1;
  if (cursor < oldest) {
    out.lost = oldest - cursor;
    cursor = oldest;
  }
  while (cursor < next_seq_ && out.events.size() < max_events) {
    const KvEvent& e = ring_[cursor % capacity_];
    if (!filter || filter(e)) out.events.push_back(e);
    ++cursor;
  }
  out.next = cursor;
  return out;
}

}  // namespace kvtier
