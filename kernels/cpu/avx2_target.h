// Brackets code compiled for AVX2 + FMA + F16C inside a translation unit built for the baseline x86-64
// (the fast CPU paths are chosen at run time): GCC's target pragmas, or clang's attribute push.
#pragma once

#if defined(__clang__)
#define KVTIER_AVX2_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c\"))), apply_to = function)")
#define KVTIER_AVX2_END _Pragma("clang attribute pop")
#else
#define KVTIER_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define KVTIER_AVX2_END _Pragma("GCC pop_options")
#endif

#if defined(__x86_64__)
#include <cpuid.h>

namespace kvtier {

// Whether this CPU (and OS) runs the code bracketed above: AVX2, FMA and F16C (CPUID leaf 1 ECX for FMA,
// F16C and OSXSAVE, XCR0 for the YMM state, leaf 7 EBX for AVX2; clang 14's __builtin_cpu_supports does
// not know "f16c").
inline bool CpuHasAvx2FmaF16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_FMA) || !(c & bit_F16C) || !(c & bit_OSXSAVE)) return false;
  unsigned xcr0 = 0, xcr0_hi = 0;  // the OS saves the YMM state (XCR0 bits 1 and 2)
  __asm__("xgetbv" : "=a"(xcr0), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0 & 6) != 6) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & bit_AVX2)) return false;
  return true;
}

}  // namespace kvtier
#endif
