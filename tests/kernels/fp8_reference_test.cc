// kvtier's FP8 codecs (kernels/fp8.h) against ml_dtypes, an independent implementation: every one of the
// 256 codes of E4M3 ("fn") and E5M2 decodes to the same value, and thousands of inputs (ties between
// neighbouring codes, their neighbours, subnormals, random magnitudes) encode to the same code. Where
// ml_dtypes overflows to NaN/Inf, kvtier saturates to the largest finite code (documented in fp8.h and
// docs/formats.md). Vectors: tests/kernels/data/fp8_ml_dtypes.txt, from gen_fp8_vectors.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "kernels/fp8.h"

namespace kvtier {
namespace {

template <class Mini>
void Check(const std::string& kind, uint32_t a, uint32_t b, int& checked, int& bad) {
  ++checked;
  if (kind == "code") {
    const float want = BitsToFloat(b), got = Mini::Decode(static_cast<uint8_t>(a));
    const bool same = (std::isnan(want) && std::isnan(got)) || FloatToBits(want) == FloatToBits(got);
    if (!same && ++bad <= 5) ADD_FAILURE() << "decode(" << a << ") = " << got << ", ml_dtypes " << want;
  } else {
    const int got = Mini::Encode(BitsToFloat(a));
    if (got != static_cast<int>(b) && ++bad <= 5)
      ADD_FAILURE() << kind << " encode(" << BitsToFloat(a) << ") = " << got << ", expected " << b;
  }
}

TEST(Fp8Reference, AgreesWithMlDtypesOnEveryCodeAndOnRounding) {
  std::ifstream in(KVTIER_FP8_VECTORS);
  ASSERT_TRUE(in.good()) << "cannot read " << KVTIER_FP8_VECTORS;
  int checked[2][3] = {}, bad = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    std::string fmt, kind;
    ss >> fmt >> kind;
    uint32_t a = 0, b = 0;
    if (kind == "code") {
      ss >> a >> std::hex >> b;
    } else {
      ss >> std::hex >> a >> std::dec >> b;
    }
    ASSERT_FALSE(ss.fail()) << "bad line: " << line;
    const int f = fmt == "e4m3" ? 0 : 1;
    const int k = kind == "code" ? 0 : kind == "enc" ? 1 : 2;
    if (f == 0)
      Check<Fp8E4m3>(kind, a, b, checked[f][k], bad);
    else
      Check<Fp8E5m2>(kind, a, b, checked[f][k], bad);
  }
  EXPECT_EQ(bad, 0);
  for (int f = 0; f < 2; ++f) {
    EXPECT_EQ(checked[f][0], 256) << "every code of format " << f;
    EXPECT_GT(checked[f][1], 1000) << "rounding cases of format " << f;
    EXPECT_GT(checked[f][2], 10) << "overflow cases of format " << f;
  }
}

}  // namespace
}  // namespace kvtier
