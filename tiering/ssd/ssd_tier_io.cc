// SsdTier's data paths: Put and Get, and the extent read/write pipeline under them.
//
// The pipeline. A batch of extents is sorted by disk position; runs of adjacent extents in one slab
// become one stream, which is cut into ops of at most io_block_bytes. Each op takes a registered
// buffer from the pool (waiting, until the deadline, for one to come back), is filled (writes) and
// submitted; the backend keeps queue_depth ops in flight, and the completion callback releases the
// buffer (after copying it out, for reads). The caller then waits on the batch until the deadline. A
// caller that times out leaves: the batch, its buffers and, for writes, the extents stay reserved until
// the kernel completes the ops.
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "tiering/ssd/record_codec.h"
#include "tiering/ssd/ssd_tier_internal.h"

namespace kvtier {

namespace f = ssd_format;

absl::Status IoErrorStatus(int64_t neg_errno, std::string_view what) {
  const int err = static_cast<int>(-neg_errno);
  const std::string msg = absl::StrFormat("%s: %s", what, std::strerror(err));
  if (err == ETIMEDOUT) return absl::DeadlineExceededError(msg);
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::UnavailableError(msg);
}

namespace {

// A run of write jobs adjacent on disk in one slab.
struct Stream {
  std::shared_ptr<SlabFile> file;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::vector<size_t> jobs;  // indices into the job span, in disk order
};

// Copies bytes [rel, rel + len) of a job's record image (its pieces, then zeros) into dst.
void CopyJobRange(std::span<const std::string_view> pieces, uint64_t rel, uint64_t len, uint8_t* dst) {
  uint64_t at = 0;  // offset of the current piece in the record image
  uint64_t done = 0;
  for (std::string_view p : pieces) {
    if (done == len) return;
    const uint64_t begin = at;
    const uint64_t end = at + p.size();
    at = end;
    if (end <= rel + done) continue;
    const uint64_t from = rel + done - begin;
    const uint64_t n = std::min<uint64_t>(end - (rel + done), len - done);
    std::memcpy(dst + done, p.data() + from, n);
    done += n;
  }
  std::memset(dst + done, 0, len - done);  // padding to the block boundary
}

}  // namespace

void SsdTier::WriteExtents(std::span<WriteJob> jobs, absl::Time deadline) {
  std::vector<size_t> order(jobs.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const Extent& x = jobs[a].lease->extent();
    const Extent& y = jobs[b].lease->extent();
    return x.slab != y.slab ? x.slab < y.slab : x.offset < y.offset;
  });
  std::vector<Stream> streams;
  for (size_t j : order) {
    const Extent& e = jobs[j].lease->extent();
    if (streams.empty() || streams.back().file->id() != e.slab ||
        streams.back().offset + streams.back().length != e.offset) {
      streams.push_back(Stream{jobs[j].lease->file(), e.offset, 0, {}});
    }
    streams.back().jobs.push_back(j);
    streams.back().length += e.length;
  }

  struct OpPlan {
    size_t stream;
    uint64_t rel;  // offset in the stream
    uint32_t len;
  };
  std::vector<OpPlan> ops;
  const uint64_t block = options_.io_block_bytes;
  for (size_t s = 0; s < streams.size(); ++s) {
    for (uint64_t rel = 0; rel < streams[s].length; rel += block) {
      ops.push_back(OpPlan{s, rel, static_cast<uint32_t>(std::min(block, streams[s].length - rel))});
    }
  }

  std::shared_ptr<IoBatch> batch = IoBatch::Create(ops.size());
  for (size_t k = 0; k < ops.size(); ++k) {
    const OpPlan& plan = ops[k];
    const Stream& st = streams[plan.stream];
    std::optional<BufferPool::Buffer> buf = buffers_->Acquire(deadline);
    if (!buf) {
      batch->Fail(k, -ETIMEDOUT);
      continue;
    }
    // Fill the buffer from every job overlapping [rel, rel + len) of the stream.
    uint64_t job_start = 0;
    for (size_t j : st.jobs) {
      const uint64_t job_len = jobs[j].lease->extent().length;
      const uint64_t lo = std::max(plan.rel, job_start);
      const uint64_t hi = std::min<uint64_t>(plan.rel + plan.len, job_start + job_len);
      if (lo < hi) CopyJobRange(jobs[j].pieces, lo - job_start, hi - lo, buf->data + (lo - plan.rel));
      job_start += job_len;
    }
    const IoOp op{IoKind::kWrite, st.file->fd(), st.offset + plan.rel, buf->data, plan.len, buf->index};
    backend_->Submit(op, deadline,
                     batch->Callback(k, [pool = buffers_.get(), index = buf->index, file = st.file](int64_t) {
                       pool->Release(index);
                     }));
  }

  if (!batch->WaitUntil(deadline)) {
    // Keep every extent reserved until the kernel is done writing it.
    std::vector<std::shared_ptr<ExtentLease>> held;
    for (WriteJob& job : jobs) {
      held.push_back(job.lease);
      job.status = absl::DeadlineExceededError("ssd write timed out");
    }
    batch->OnAllComplete([held = std::move(held)] {});
    counters_->timeouts.fetch_add(1);
    return;
  }

  // An op that failed or came back short fails every job it touched.
  for (size_t k = 0; k < ops.size(); ++k) {
    const int64_t r = batch->result(k);
    if (r == ops[k].len) {
      counters_->disk_bytes_written.fetch_add(ops[k].len);
      continue;
    }
    const absl::Status s = r < 0 ? IoErrorStatus(r, "ssd write") : absl::UnavailableError("ssd short write");
    uint64_t job_start = 0;
    for (size_t j : streams[ops[k].stream].jobs) {
      const uint64_t job_len = jobs[j].lease->extent().length;
      if (job_start < ops[k].rel + ops[k].len && ops[k].rel < job_start + job_len && jobs[j].status.ok()) {
        jobs[j].status = s;
      }
      job_start += job_len;
    }
    if (r == -ENOSPC || r == -EDQUOT) {
      counters_->enospc_drops.fetch_add(1);
    } else if (r == -ETIMEDOUT) {
      counters_->timeouts.fetch_add(1);
    } else {
      counters_->io_errors.fetch_add(1);
    }
  }

  // Make the written records durable before anyone indexes them (power-loss durability only: completed
  // O_DIRECT writes already survive the process).
  if (options_.durability != SsdDurability::kPowerLoss) return;
  std::vector<std::shared_ptr<SlabFile>> files;
  for (const Stream& st : streams) {
    const bool any_ok = std::any_of(st.jobs.begin(), st.jobs.end(), [&](size_t j) { return jobs[j].status.ok(); });
    if (any_ok && (files.empty() || files.back() != st.file)) files.push_back(st.file);
  }
  if (files.empty()) return;
  std::vector<absl::Status> synced(files.size());
  {
    std::shared_ptr<IoBatch> sync = IoBatch::Create(files.size());
    for (size_t i = 0; i < files.size(); ++i) {
      backend_->Submit(IoOp{IoKind::kSync, files[i]->fd(), 0, nullptr, 0, -1}, deadline,
                       sync->Callback(i, [file = files[i]](int64_t) {}));
    }
    const bool done = sync->WaitUntil(deadline);
    for (size_t i = 0; i < files.size(); ++i) {
      const int64_t r = done ? sync->result(i) : -ETIMEDOUT;
      if (r < 0) {
        synced[i] = IoErrorStatus(r, "ssd fdatasync");
        (r == -ETIMEDOUT ? counters_->timeouts : counters_->io_errors).fetch_add(1);
      }
    }
  }
  for (size_t i = 0; i < files.size(); ++i) {
    if (synced[i].ok()) continue;
    for (WriteJob& job : jobs) {
      if (job.lease->file() == files[i] && job.status.ok()) job.status = synced[i];
    }
  }
}

std::vector<SsdTier::ReadResult> SsdTier::ReadExtents(std::span<const ReadJob> jobs, absl::Time deadline) {
  // One target per job; shared with the callbacks, which copy into it and may outlive this call.
  struct Target {
    uint64_t split = 0, keep = 0;
    std::string head, body;
    uint8_t* body_ptr = nullptr;  // body.data() or the caller's buffer
    bool external = false;        // body_ptr is the caller's: never written once the caller has left
    std::atomic<int> pending{0};  // ops that still have to deliver part of this job
    std::atomic<int64_t> error{0};
    ssd::Mutex mu;  // external targets only: orders late copies against abandonment
    bool abandoned ABSL_GUARDED_BY(mu) = false;

    // Copies record bytes [at, at + len) from src into head/body.
    void Fill(uint64_t at, const uint8_t* src, uint64_t len) {
      const uint64_t end = at + len;
      if (at < split) std::memcpy(head.data() + at, src, std::min(end, split) - at);
      const uint64_t b0 = std::max(at, split), b1 = std::min(end, keep);
      if (b0 >= b1) return;
      if (!external) {
        std::memcpy(body_ptr + (b0 - split), src + (b0 - at), b1 - b0);
        return;
      }
      ssd::MutexLock lock(&mu);
      if (!abandoned) std::memcpy(body_ptr + (b0 - split), src + (b0 - at), b1 - b0);
    }
  };
  // A piece of an op's buffer that belongs to one job.
  struct Piece {
    std::shared_ptr<Target> target;
    uint64_t target_offset;
    uint32_t buffer_offset;
    uint32_t len;
  };
  struct OpPlan {
    std::shared_ptr<SlabFile> file;
    uint64_t offset;
    uint32_t len;
    std::vector<Piece> pieces;
  };
  std::vector<std::shared_ptr<Target>> targets;
  for (const ReadJob& j : jobs) {
    auto t = std::make_shared<Target>();
    t->split = std::min(j.split, j.length);
    t->keep = std::clamp(j.keep, t->split, j.length);
    t->head.resize(t->split);
    t->external = j.body_dest != nullptr;
    if (t->external) {
      t->body_ptr = j.body_dest;
    } else {
      t->body.resize(t->keep - t->split);
      t->body_ptr = reinterpret_cast<uint8_t*>(t->body.data());
    }
    targets.push_back(std::move(t));
  }
  // Jobs adjacent on disk (a batch of records written together) are read as one stream, cut into
  // io_block_bytes ops: large, uniform requests instead of one short tail op per record.
  std::vector<size_t> order(jobs.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const Extent& x = jobs[a].lease->extent();
    const Extent& y = jobs[b].lease->extent();
    return x.slab != y.slab ? x.slab < y.slab : x.offset < y.offset;
  });
  const uint64_t block = options_.io_block_bytes;
  std::vector<OpPlan> ops;
  for (size_t n = 0; n < order.size();) {
    // [begin, end) of `order` is one stream: each next job starts where the previous one's read ends.
    const size_t begin = n;
    const Extent& first = jobs[order[begin]].lease->extent();
    uint64_t stream_end = first.offset + jobs[order[begin]].length;
    for (++n; n < order.size(); ++n) {
      const Extent& e = jobs[order[n]].lease->extent();
      if (e.slab != first.slab || e.offset != stream_end ||
          jobs[order[n - 1]].length != jobs[order[n - 1]].lease->extent().length) {
        break;
      }
      stream_end += jobs[order[n]].length;
    }
    for (uint64_t at = first.offset; at < stream_end; at += block) {
      OpPlan op{jobs[order[begin]].lease->file(), at, static_cast<uint32_t>(std::min(block, stream_end - at)), {}};
      for (size_t m = begin; m < n; ++m) {
        const uint64_t lo = std::max(at, jobs[order[m]].lease->extent().offset);
        const uint64_t hi = std::min(at + op.len, jobs[order[m]].lease->extent().offset + jobs[order[m]].length);
        if (lo >= hi) continue;
        op.pieces.push_back(Piece{targets[order[m]], lo - jobs[order[m]].lease->extent().offset,
                                  static_cast<uint32_t>(lo - at), static_cast<uint32_t>(hi - lo)});
        targets[order[m]]->pending.fetch_add(1);
      }
      ops.push_back(std::move(op));
    }
  }

  std::shared_ptr<IoBatch> batch = IoBatch::Create(ops.size());
  for (size_t k = 0; k < ops.size(); ++k) {
    OpPlan& plan = ops[k];
    std::optional<BufferPool::Buffer> buf = buffers_->Acquire(deadline);
    if (!buf) {
      for (Piece& p : plan.pieces) {
        p.target->error.store(-ETIMEDOUT);
        p.target->pending.fetch_sub(1);
      }
      batch->Fail(k, -ETIMEDOUT);
      continue;
    }
    const IoOp op{IoKind::kRead, plan.file->fd(), plan.offset, buf->data, plan.len, buf->index};
    backend_->Submit(op, deadline,
                     batch->Callback(k, [pieces = std::move(plan.pieces), len = plan.len, data = buf->data,
                                         index = buf->index, pool = buffers_.get(), file = plan.file](int64_t r) {
                       for (const Piece& p : pieces) {
                         if (r == len) {
                           p.target->Fill(p.target_offset, data + p.buffer_offset, p.len);
                         } else {
                           p.target->error.store(r < 0 ? r : -EIO);
                         }
                       }
                       pool->Release(index);
                       for (const Piece& p : pieces) p.target->pending.fetch_sub(1, std::memory_order_acq_rel);
                     }));
  }
  batch->WaitUntil(deadline);

  std::vector<ReadResult> out(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) {
    Target& t = *targets[i];
    if (t.pending.load(std::memory_order_acquire) > 0) {
      out[i].status = absl::DeadlineExceededError("ssd read timed out");
      counters_->timeouts.fetch_add(1);
      if (t.external) {  // from now on late completions must not touch the caller's buffer
        ssd::MutexLock lock(&t.mu);
        t.abandoned = true;
      }
    } else if (const int64_t e = t.error.load(); e != 0) {
      out[i].status = IoErrorStatus(e, "ssd read");
      (e == -ETIMEDOUT ? counters_->timeouts : counters_->io_errors).fetch_add(1);
    } else {
      counters_->disk_bytes_read.fetch_add(jobs[i].length);
      out[i].head = std::move(t.head);  // every op completed: no callback touches them any more
      out[i].body = std::move(t.body);
    }
  }
  return out;
}

std::vector<absl::Status> SsdTier::Put(std::span<const SsdPutItem> items) {
  const absl::Time deadline = absl::Now() + options_.io_timeout;
  std::vector<absl::Status> results(items.size());
  counters_->puts.fetch_add(items.size());

  std::vector<size_t> live;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].metadata.size() > f::kMaxMetadataLength || items[i].payload.size() > f::kMaxPayloadLength) {
      results[i] = absl::InvalidArgumentError(absl::StrFormat("ssd record too large: metadata=%d payload=%d",
                                                              items[i].metadata.size(), items[i].payload.size()));
    } else {
      live.push_back(i);
    }
  }
  if (live.empty()) return results;

  // Compress (when it pays) and build headers, in parallel.
  std::vector<std::string_view> payloads;
  for (size_t i : live) payloads.push_back(items[i].payload);
  std::vector<std::string> compressed;
  codec_->CompressBatch(payloads, &compressed);
  struct Prepared {
    RecordHeader header;
    std::array<uint8_t, f::kHeaderSize> bytes;
    std::string_view stored;
  };
  std::vector<Prepared> prep(live.size());
  const uint64_t first_sequence = next_sequence_.fetch_add(live.size());
  workers_->ParallelFor(live.size(), [&](size_t j) {
    const SsdPutItem& item = items[live[j]];
    Prepared& p = prep[j];
    const bool zstd = !compressed[j].empty();
    p.stored = zstd ? std::string_view(compressed[j]) : item.payload;
    p.header.key = item.key;
    p.header.codec = zstd ? f::RecordCodec::kZstd : f::RecordCodec::kNone;
    p.header.metadata_length = static_cast<uint32_t>(item.metadata.size());
    p.header.stored_length = static_cast<uint32_t>(p.stored.size());
    p.header.raw_length = static_cast<uint32_t>(item.payload.size());
    p.header.sequence = first_sequence + j;
    EncodeRecordHeader(&p.header, item.metadata, p.stored, p.bytes.data());
  });

  // Space, then the writes.
  std::vector<WriteJob> jobs;
  std::vector<size_t> job_prep;
  for (size_t j = 0; j < live.size(); ++j) {
    std::shared_ptr<ExtentLease> lease = AllocateLease(prep[j].header.extent_bytes());
    if (!lease) {
      results[live[j]] = absl::ResourceExhaustedError("ssd tier full");
      counters_->full_rejects.fetch_add(1);
      continue;
    }
    const std::string_view header(reinterpret_cast<const char*>(prep[j].bytes.data()), f::kHeaderSize);
    jobs.push_back(WriteJob{std::move(lease), {header, items[live[j]].metadata, prep[j].stored}, absl::OkStatus()});
    job_prep.push_back(j);
  }
  const absl::Time write_start = absl::Now();
  WriteExtents(jobs, deadline);
  uint64_t written = 0;
  for (const WriteJob& job : jobs) written += job.status.ok() ? job.lease->extent().length : 0;
  codec_->ObserveDiskWrite(written, absl::Now() - write_start);

  // Index what is durable. Commit and map update happen under commit_mu_ so they agree; the slab check is
  // stable there too (SetCapacity removes slabs under commit_mu_).
  std::vector<Resident> replaced;  // destroyed after the locks are released
  {
    ssd::MutexLock commit(&commit_mu_);
    std::vector<SsdIndex::Put> puts;
    std::vector<size_t> put_job;
    for (size_t n = 0; n < jobs.size(); ++n) {
      if (!jobs[n].status.ok()) continue;
      if (!LeaseIsLive(*jobs[n].lease)) {
        jobs[n].status = absl::UnavailableError("ssd slab removed by a capacity change");
        continue;
      }
      const Prepared& p = prep[job_prep[n]];
      IndexEntry e;
      e.extent = jobs[n].lease->extent();
      e.metadata_length = p.header.metadata_length;
      e.stored_length = p.header.stored_length;
      e.raw_length = p.header.raw_length;
      e.codec = p.header.codec;
      e.sequence = p.header.sequence;
      e.checksum = p.header.record_checksum;
      puts.push_back(SsdIndex::Put{p.header.key, e, items[live[job_prep[n]]].metadata});
      put_job.push_back(n);
    }
    const bool sync = options_.durability == SsdDurability::kPowerLoss;
    const absl::Status s = puts.empty() ? absl::OkStatus() : index_->Apply(puts, {}, sync);
    if (!s.ok()) {
      for (size_t n : put_job) jobs[n].status = s;
      Log(absl::StrFormat("ssd_index_write_failed records=%d error=\"%s\"", puts.size(), s.message()));
    } else {
      ssd::MutexLock lock(&mu_);
      for (size_t n = 0; n < puts.size(); ++n) {
        Resident& slot = map_[puts[n].key];
        if (slot.lease) replaced.push_back(std::move(slot));
        slot = Resident{puts[n].entry, jobs[put_job[n]].lease};
      }
    }
  }

  for (size_t n = 0; n < jobs.size(); ++n) {
    const size_t j = job_prep[n];
    results[live[j]] = jobs[n].status;
    if (!jobs[n].status.ok()) {
      counters_->write_drops.fetch_add(1);
      continue;
    }
    counters_->payload_bytes_written.fetch_add(prep[j].header.raw_length);
    counters_->stored_bytes_written.fetch_add(prep[j].header.stored_length);
    if (prep[j].header.codec != f::RecordCodec::kNone) counters_->compressed_records.fetch_add(1);
  }
  return results;
}

}  // namespace kvtier
