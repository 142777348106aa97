// The processes of a stress run other than the orchestrator. Each runs in a child forked by the
// orchestrator (which itself never touches gRPC, so the fork is clean), talks to kvtierd only through the
// public C++ client, and reports through the shared region (stress_shared.h). Each returns the child's
// exit code.
//   RunWorker     an engine worker: look up shared and private prompts (pin + page-in), read back and
//                 verify every block served, prefill and commit what missed, verify it, hold pins for a
//                 while and check that held blocks are never lost.
//   RunOperator   an operator: resize tiers, evict, flush/drain, sample Stats, and check that sessions of
//                 killed workers leave no pins behind once their lease is over.
//   RunVerifier   after a daemon restart: verify a sample of prompts and every block acknowledged as
//                 durable; with final_check, also wait for dead sessions to go and require zero pins.
//   RunSsdAudit   after kill -9: open the SSD tier directly and audit it (SsdTier::Audit).
#pragma once

#include "tests/reliability/stress_model.h"
#include "tests/reliability/stress_shared.h"

namespace kvtier::stress {

int RunWorker(const Options& o, Shared* shared, int index, uint64_t seed);
int RunOperator(const Options& o, Shared* shared, bool crash_mode, uint64_t seed);
int RunVerifier(const Options& o, Shared* shared, bool final_check, uint64_t seed);
int RunSsdAudit(const Options& o, Shared* shared);

}  // namespace kvtier::stress
