// ThreadSanitizer suppressions for the SSD-tier tests, compiled into each test binary (TSan reads
// __tsan_default_suppressions at start-up; other builds ignore the function).
//
// Only third-party code linked uninstrumented is suppressed: RocksDB comes from Debian's static
// librocksdb.a, so TSan sees its mutexes (pthread, intercepted) but not its atomics, and reports its
// internal reference counting (Version::Unref, the cache-role registry) as races between its background
// threads and ours. Nothing of kvtier's is suppressed: our locks are visible (tiering/ssd/mutex.h).
extern "C" const char* __tsan_default_suppressions() { return "race:rocksdb::\n"; }
