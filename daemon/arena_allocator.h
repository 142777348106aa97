// ArenaMessageAllocator: request and response of a unary callback method on one protobuf Arena, with a
// first block inline in the holder. A Lookup or Commit then costs one allocation for all its messages
// (repeated tokens, entries, key strings) instead of one per sub-object, and frees them in one go: malloc
// was the largest single cost of the daemon's request path in the profile (bench/results/).
#pragma once

#include <grpcpp/support/message_allocator.h>

#include "google/protobuf/arena.h"

namespace kvtier {

template <class Request, class Response>
class ArenaMessageAllocator final : public grpc::MessageAllocator<Request, Response> {
 public:
  grpc::MessageHolder<Request, Response>* AllocateMessages() override { return new Holder(); }

 private:
  class Holder final : public grpc::MessageHolder<Request, Response> {
   public:
    Holder() : arena_(Options(initial_)) {
      this->set_request(google::protobuf::Arena::CreateMessage<Request>(&arena_));
      this->set_response(google::protobuf::Arena::CreateMessage<Response>(&arena_));
    }
    void Release() override { delete this; }

   private:
    static google::protobuf::ArenaOptions Options(char* block) {
      google::protobuf::ArenaOptions o;
      o.initial_block = block;
      o.initial_block_size = sizeof(initial_);
      return o;
    }
    alignas(16) char initial_[16384];
    google::protobuf::Arena arena_;
  };
};

}  // namespace kvtier
