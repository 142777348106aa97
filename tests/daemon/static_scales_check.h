// Checks KV read back from a layout with calibrated static int8 scales against the self-verifying oracle
// (kernels/testing/kv_oracle.h), with the bound docs/calibration.md states: a value within the calibrated
// range (|x| <= 127 s) is within s/2 (plus the fp16 rounding of the result); a value beyond it is clipped
// to +-127 s and counted; layers without static scales come back exactly.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/half.h"
#include "kernels/page_geometry.h"
#include "kernels/testing/kv_oracle.h"
#include "tiering/static_scales.h"

namespace kvtier::testing {

struct StaticScaleCheck {
  int64_t values = 0;
  int64_t clipped = 0;     // values beyond the calibrated range (expected to be clipped)
  int64_t bad = 0;         // values outside the stated bound
  float worst_ratio = 0;   // max (|error| - fp16 output rounding) / (s/2) over unclipped static values
};

inline void CheckStaticScalePage(const PageGeometry& act, const StaticScaleSet& set,
                                 const std::vector<bool>& static_layers, uint64_t seed, const uint8_t* page,
                                 StaticScaleCheck* r) {
  const LayoutShape& s = act.shape();
  for (int layer = 0; layer < s.num_layers; ++layer)
    for (Operand op : {Operand::kKey, Operand::kValue})
      for (int head = 0; head < s.num_kv_heads; ++head) {
        const uint8_t* seg = page + act.segment(layer, op, head).data_offset;
        for (int t = 0; t < s.block_size; ++t)
          for (int c = 0; c < s.head_dim; ++c) {
            ++r->values;
            const float x = HalfToFloat(FloatToHalf(OracleValue(seed, layer, op, head, t, c)));
            uint16_t bits;
            std::memcpy(&bits, seg + 2 * (t * s.head_dim + c), 2);
            const float got = HalfToFloat(bits);
            if (!static_layers[layer]) {
              r->bad += got != x;
              continue;
            }
            const float sc = HalfToFloat(FloatToHalfRoundUp(set.scales[set.Index(layer, op, head, c)]));
            const float inv = 1.0f / sc;
            if (std::fabs(x * inv) > 127.0f) {
              ++r->clipped;
              r->bad += std::fabs(std::fabs(got) - 127.0f * sc) > 127.0f * sc / 1024 || std::signbit(got) != std::signbit(x);
              continue;
            }
            const float err = std::fabs(got - x);
            r->bad += err > sc / 2 + std::fabs(got) / 2048 + sc * 1e-4f;  // fp32 scaling rounding: far below
            r->worst_ratio = std::fmax(r->worst_ratio, (err - std::fabs(got) / 2048) / (sc / 2));
          }
      }
}

}  // namespace kvtier::testing
