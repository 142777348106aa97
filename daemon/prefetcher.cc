#include "daemon/prefetcher.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "tiering/log.h"

namespace kvtier {

Prefetcher::Prefetcher(BlockStore* store, SessionRegistry* sessions)
    : store_(store), sessions_(sessions), worker_([this] { Loop(); }) {}

Prefetcher::~Prefetcher() { Stop(); }

void Prefetcher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  worker_.join();
  std::vector<std::function<void()>> calls;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, job] : jobs_) {
      if (job->progress.state == PrefetchProgress::State::kRunning) {
        job->progress.state = PrefetchProgress::State::kCancelled;
        // Its pins (if any) stay with the session, which releases them when it ends.
      }
      for (auto& w : job->waiters)
        calls.push_back([done = std::move(w.done), p = job->progress] { done(p); });
      job->waiters.clear();
    }
  }
  for (auto& c : calls) c();
}

absl::StatusOr<uint64_t> Prefetcher::Start(const Session& session, uint64_t layout_id, std::vector<BlockKey> keys,
                                           bool pin) {
  if (keys.empty()) return absl::InvalidArgumentError("a prefetch needs at least one block (keys or full blocks of tokens)");
  if (keys.size() > static_cast<size_t>(kMaxKeys))
    return absl::InvalidArgumentError(absl::StrCat(keys.size(), " blocks in one prefetch; the limit is ", kMaxKeys));
  auto job = std::make_shared<Job>();
  job->session = session.id;
  job->salt = session.salt;
  job->layout_id = layout_id;
  job->pin = pin;
  job->progress.requested = static_cast<int32_t>(keys.size());
  job->keys = std::move(keys);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the daemon is shutting down");
    int running = 0;
    for (const auto& [id, j] : jobs_)
      if (j->session == session.id && j->progress.state == PrefetchProgress::State::kRunning) ++running;
    if (running >= kMaxPerSession)
      return absl::ResourceExhaustedError(
          absl::StrCat(running, " prefetches of this session are still running; the limit is ", kMaxPerSession));
    job->id = next_id_++;
    jobs_.emplace(job->id, job);
    runnable_.push_back(job->id);
  }
  cv_.notify_all();
  return job->id;
}

void Prefetcher::Get(SessionId session, uint64_t id, absl::Duration wait, Callback done) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second->session != session) {
    lock.unlock();
    done(absl::NotFoundError(absl::StrCat("unknown prefetch_id ", id, " (finished prefetches are kept ",
                                          absl::ToInt64Seconds(kKeepDone), " s)")));
    return;
  }
  Job& job = *it->second;
  if (job.progress.state != PrefetchProgress::State::kRunning || wait <= absl::ZeroDuration() || stopping_) {
    PrefetchProgress p = job.progress;
    lock.unlock();
    done(std::move(p));
    return;
  }
  job.waiters.push_back({absl::Now() + wait, std::move(done)});
  lock.unlock();
  cv_.notify_all();
}

bool Prefetcher::Step(Job& job) {
  const size_t end = std::min(job.keys.size(), job.next + kChunkBlocks);
  if (!sessions_->Find(job.session)) return true;  // the session ended: nothing to do for it
  auto out = store_->PinAndPromote(job.session, job.salt, job.layout_id,
                                   std::span<const BlockKey>(job.keys).subspan(job.next, end - job.next), job.pin);
  // The session may have ended while the blocks were pinned for it: release them with it (the same race
  // as a call in flight when the lease ends).
  if (!sessions_->Find(job.session)) {
    store_->ReleaseSession(job.session);
    return true;
  }
  if (!out.ok()) {
    KVTIER_LOG(kWarning, "prefetch_failed") << "session=" << job.session << " error=\"" << out.status() << "\"";
    return true;  // ends the prefix where it is
  }
  const size_t want = end - job.next, got = out->blocks.size();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& b : out->blocks) job.progress.blocks.push_back(b);
  job.progress.ready = static_cast<int32_t>(job.progress.blocks.size());
  job.next += got;
  return got < want || job.next >= job.keys.size();  // the prefix ended, or is complete
}

void Prefetcher::CollectDueLocked(std::vector<std::function<void()>>* calls) {
  const absl::Time now = absl::Now();
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    Job& job = *it->second;
    const bool finished = job.progress.state != PrefetchProgress::State::kRunning;
    for (auto w = job.waiters.begin(); w != job.waiters.end();) {
      if (finished || w->deadline <= now) {
        calls->push_back([done = std::move(w->done), p = job.progress] { done(p); });
        w = job.waiters.erase(w);
      } else {
        ++w;
      }
    }
    // Forget finished prefetches after a while, and at once when their session is gone.
    if (finished && job.waiters.empty() && (now - job.finished > kKeepDone || !sessions_->Find(job.session))) {
      it = jobs_.erase(it);
    } else {
      ++it;
    }
  }
}

void Prefetcher::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    std::vector<std::function<void()>> calls;
    CollectDueLocked(&calls);
    if (!calls.empty()) {
      lock.unlock();
      for (auto& c : calls) c();
      lock.lock();
      continue;
    }
    if (runnable_.empty()) {
      // Sleep until new work, the next waiter's deadline, or the next clean-up.
      absl::Time wake = absl::Now() + absl::Seconds(5);
      for (const auto& [id, job] : jobs_)
        for (const auto& w : job->waiters) wake = std::min(wake, w.deadline);
      cv_.wait_for(lock, absl::ToChronoMilliseconds(std::max(wake - absl::Now(), absl::Milliseconds(1))));
      continue;
    }
    const uint64_t id = runnable_.front();
    runnable_.pop_front();
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    std::shared_ptr<Job> job = it->second;
    lock.unlock();
    const bool finished = Step(*job);
    lock.lock();
    if (!finished) {
      runnable_.push_back(id);
      continue;
    }
    job->progress.state =
        sessions_->Find(job->session) ? PrefetchProgress::State::kDone : PrefetchProgress::State::kCancelled;
    job->progress.prefix_end = job->progress.ready;
    job->finished = absl::Now();
    KVTIER_LOG(kDebug, "prefetch_done") << "session=" << job->session << " id=" << job->id
                                        << " requested=" << job->progress.requested << " ready=" << job->progress.ready;
  }
}

}  // namespace kvtier
