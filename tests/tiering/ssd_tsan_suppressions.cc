// ThreadSanitizer suppressions for the tests that open an SSD tier, compiled into each test binary (TSan
// reads __tsan_default_suppressions at start-up; other builds ignore the function).
//
// Only third-party code linked uninstrumented is suppressed; nothing of kvtier's (our locks are visible:
// tiering/sync.h, tiering/ssd/mutex.h):
//  - RocksDB comes from Debian's static librocksdb.a: TSan sees its mutexes (pthread, intercepted) but not
//    its atomics, and reports its internal reference counting (Version::Unref, the cache-role registry)
//    as races between its background threads and ours.
//  - abseil's Mutex deadlock detector (GraphCycles, in Debian's uninstrumented libabsl) guards its graph
//    with an internal spinlock TSan cannot see.
extern "C" const char* __tsan_default_suppressions() {
  return "race:rocksdb::\n"
         "race:absl::debian3::synchronization_internal::GraphCycles\n";
}
