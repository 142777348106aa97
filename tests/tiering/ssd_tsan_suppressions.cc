// ThreadSanitizer suppressions for the SSD-tier tests, compiled into each test binary (TSan reads
// __tsan_default_suppressions at start-up; other builds ignore the function).
//
// Only third-party code that is linked uninstrumented is suppressed: RocksDB (Debian's static
// librocksdb.a) initialises its cache-role registry under its own mutex, which TSan sees only half of.
// Nothing of kvtier's is suppressed.
extern "C" const char* __tsan_default_suppressions() {
  return "race:rocksdb::RegisterCacheDeleterRole\n"
         "race:rocksdb::CopyCacheDeleterRoleMap\n"
         "race:rocksdb::(anonymous namespace)::GetRegistry\n";
}
