// Masked linear layer: y = x (W ⊙ M)^T + b, with M a fixed 0/1 mask (MADE, FVSBN layers).
//
//   forward   y[n, o]  = sum_i x[n, i] Wm[o, i] + b[o]         Wm = where(M, W, 0)
//   grad x    gx[n, i] = sum_o gy[n, o] Wm[o, i]
//   grad W    gW[o, i] = M[o, i] ? sum_n gy[n, o] x[n, i] : 0   (exactly 0 where masked)
//   grad b    gb[o]    = sum_n gy[n, o]
// The mask is applied as a select, never a product, so a masked inf/NaN weight contributes 0.
// Kernels only visit the blocks of a layout (row groups [r0, r1) with their input-column span
// [c0, c1), column groups likewise): everything outside a span is a zero of the mask.
//
// Block records, shared by the CPU and CUDA kernels: int64 rows of 6, [a0, a1, b0, b1, d0, d1].
#pragma once

#include <cstdint>

#include "fastgen_math.h"

namespace fastgen {

struct MaskBlock {
  int64_t a0, a1;  // the partitioned dimension's range (rows of a row group, columns of a column group)
  int64_t b0, b1;  // the other dimension's span of non-zeros
  int64_t d0, d1;  // a range inside the span where the group's mask is all ones (empty: d0 == d1)
};

// The one piece of element math: a weight seen through the mask.
template <typename T>
FASTGEN_HOST_DEVICE inline T masked_weight(T w, bool keep) {
  return keep ? w : T(0);
}

}  // namespace fastgen
