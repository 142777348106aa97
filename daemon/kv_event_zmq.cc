#include "daemon/kv_event_zmq.h"

#include <msgpack.h>
#include <zmq.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tiering/log.h"

namespace kvtier {
namespace {

const char* Medium(uint8_t tier) {
  switch (static_cast<Tier>(tier)) {
    case Tier::kGpu: return "GPU";
    case Tier::kHost: return "CPU";
    case Tier::kSsd: return "DISK";
  }
  return "GPU";
}

void PackStr(msgpack_packer* pk, std::string_view s) {
  msgpack_pack_str(pk, s.size());
  msgpack_pack_str_body(pk, s.data(), s.size());
}

void PackKey(msgpack_packer* pk, const BlockKey& k) {
  const std::string b = k.ToBytes();
  msgpack_pack_bin(pk, b.size());
  msgpack_pack_bin_body(pk, b.data(), b.size());
}

void PackStored(msgpack_packer* pk, const BlockKey& key, const BlockKey& parent, const std::vector<int32_t>& tokens,
                int32_t block_size, uint8_t tier) {
  msgpack_pack_array(pk, 8);
  PackStr(pk, "BlockStored");
  msgpack_pack_array(pk, 1);
  PackKey(pk, key);
  if (parent.IsZero()) {
    msgpack_pack_nil(pk);
  } else {
    PackKey(pk, parent);
  }
  msgpack_pack_array(pk, tokens.size());
  for (int32_t t : tokens) msgpack_pack_int32(pk, t);
  msgpack_pack_int32(pk, block_size);
  msgpack_pack_nil(pk);  // lora_id
  PackStr(pk, Medium(tier));
  msgpack_pack_nil(pk);  // lora_name
}

void PackRemoved(msgpack_packer* pk, const BlockKey& key, uint8_t tier) {
  msgpack_pack_array(pk, 3);
  PackStr(pk, "BlockRemoved");
  msgpack_pack_array(pk, 1);
  PackKey(pk, key);
  PackStr(pk, Medium(tier));
}

}  // namespace

absl::StatusOr<std::unique_ptr<KvEventZmqPublisher>> KvEventZmqPublisher::Start(const std::string& endpoint,
                                                                                const std::string& topic,
                                                                                BlockStore* store) {
  std::unique_ptr<KvEventZmqPublisher> p(new KvEventZmqPublisher());
  p->store_ = store;
  p->topic_ = topic;
  p->ctx_ = zmq_ctx_new();
  if (p->ctx_ == nullptr) return absl::InternalError("zmq_ctx_new failed");
  p->pub_ = zmq_socket(p->ctx_, ZMQ_PUB);
  if (p->pub_ == nullptr) return absl::InternalError(absl::StrCat("zmq_socket: ", zmq_strerror(zmq_errno())));
  const int hwm = 100000, linger = 0;
  zmq_setsockopt(p->pub_, ZMQ_SNDHWM, &hwm, sizeof hwm);
  zmq_setsockopt(p->pub_, ZMQ_LINGER, &linger, sizeof linger);
  const bool bind = absl::StrContains(endpoint, "*") || absl::StrContains(endpoint, "::") ||
                    absl::StartsWith(endpoint, "ipc://") || absl::StartsWith(endpoint, "inproc://");
  if ((bind ? zmq_bind(p->pub_, endpoint.c_str()) : zmq_connect(p->pub_, endpoint.c_str())) != 0)
    return absl::UnavailableError(absl::StrCat("KV event publisher on ", endpoint, ": ", zmq_strerror(zmq_errno())));
  p->consumer_ = store->events().AddConsumer("zmq:" + endpoint);
  p->thread_ = std::thread([raw = p.get()] { raw->Loop(); });
  KVTIER_LOG(kInfo, "kv_events_zmq") << "endpoint=" << endpoint << " mode=" << (bind ? "bind" : "connect")
                                     << " topic=\"" << topic << "\"";
  return p;
}

KvEventZmqPublisher::~KvEventZmqPublisher() {
  stop_ = true;
  if (store_ != nullptr) store_->events().WakeAll();
  if (thread_.joinable()) thread_.join();
  if (store_ != nullptr && consumer_ != 0) store_->events().RemoveConsumer(consumer_);
  if (pub_ != nullptr) zmq_close(pub_);
  if (ctx_ != nullptr) zmq_ctx_term(ctx_);
}

void KvEventZmqPublisher::Loop() {
  KvEventLog& log = store_->events();
  uint64_t cursor = log.next_seq();
  uint64_t batch_seq = 0;
  msgpack_sbuffer buf;
  msgpack_sbuffer_init(&buf);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
  auto send = [&]() {
    uint8_t seq[8];
    for (int i = 0; i < 8; ++i) seq[i] = static_cast<uint8_t>(batch_seq >> (8 * (7 - i)));
    zmq_send(pub_, topic_.data(), topic_.size(), ZMQ_SNDMORE);
    zmq_send(pub_, seq, sizeof seq, ZMQ_SNDMORE);
    zmq_send(pub_, buf.data, buf.size, 0);  // PUB never blocks: over the high-water mark it drops
    ++batch_seq;
    ++batches_;
    msgpack_sbuffer_clear(&buf);
  };
  auto begin_batch = [&](size_t events) {
    msgpack_pack_array(&pk, 2);
    msgpack_pack_double(&pk, static_cast<double>(absl::GetCurrentTimeNanos()) / 1e9);
    msgpack_pack_array(&pk, events);
  };
  while (!stop_) {
    KvEventLog::ReadResult r = log.Read(cursor, 512, nullptr, std::chrono::milliseconds(100));
    log.UpdateConsumer(consumer_, r.next, r.lost);
    if (r.lost > 0) {
      // We fell behind the buffer: tell subscribers to forget, then publish the whole cache again.
      const BlockStore::KvSnapshot snap = store_->TakeSnapshot(0);
      begin_batch(1 + snap.blocks.size());
      msgpack_pack_array(&pk, 1);
      PackStr(&pk, "AllBlocksCleared");
      for (const auto& b : snap.blocks) PackStored(&pk, b.key, b.parent, {}, b.block_size, static_cast<uint8_t>(b.tier));
      send();
      cursor = snap.next_seq;
      KVTIER_LOG(kWarning, "kv_events_zmq_resync") << "lost=" << r.lost << " blocks=" << snap.blocks.size();
      continue;
    }
    cursor = r.next;
    if (r.events.empty()) continue;
    size_t n = 0;
    for (const KvEvent& e : r.events) n += e.type == KvEventType::kMoved ? 2 : 1;
    begin_batch(n);
    for (const KvEvent& e : r.events) {
      switch (e.type) {
        case KvEventType::kStored: PackStored(&pk, e.key, e.parent, e.tokens, e.block_size, e.tier); break;
        case KvEventType::kMoved:
          PackRemoved(&pk, e.key, e.from_tier);
          PackStored(&pk, e.key, e.parent, e.tokens, e.block_size, e.tier);
          break;
        case KvEventType::kRemoved: PackRemoved(&pk, e.key, e.tier); break;
      }
    }
    send();
  }
  msgpack_sbuffer_destroy(&buf);
}

}  // namespace kvtier
