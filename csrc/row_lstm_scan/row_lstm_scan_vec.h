// Vector form of the Row LSTM cell math for the CPU kernel (any at::vec width), float32 fast.
//
// The scan's element math (5 transcendentals per cell) costs about as much as its GEMMs, so the
// generic form in row_lstm_scan.h (sign-split sigmoid/tanh around an exp with full inf/NaN and
// denormal handling) is specialised here with the same results to a few ulp:
//   sigmoid(z) = 1 / (1 + e^-z),   tanh(z) = m / (m + 2) with m = e^2z - 1 (expm1),
// where e^t takes t clamped to [-87, 88]: its result then is a normal finite float, which is
// all the two formulas need (they saturate to 0, 1, +-1 correctly at the clamp ends; the
// values lost beyond them are below 1e-38 in absolute terms). e^t: t = n ln2 + r with
// fastgen_math.h's fg_exp_parts. NaN stays NaN.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "row_lstm_scan/row_lstm_scan.h"

namespace fastgen {

// e^(K z) = s (1 + q) for float vectors (fastgen_math.h's fg_exp_parts), K a small constant
// folded into the argument: e^(Kz) = s + s q, and e^(Kz) - 1 = s q + (s - 1) without
// cancellation near 0.
template <int K>
inline void lstm_exp_parts(const at::vec::Vectorized<float>& z, at::vec::Vectorized<float>& s,
                           at::vec::Vectorized<float>& q) {
  using Vf = at::vec::Vectorized<float>;
  fg_exp_parts(at::vec::clamp(z * Vf(float(K)), Vf(-87.f), Vf(88.f)), s, q);
}

// The activations the vector cell math uses: these for float vectors, the generic ones of
// row_lstm_scan.h otherwise (double).
template <typename V>
inline V fg_sigmoid_fast(const V& z) { return fg_sigmoid(z); }
template <typename V>
inline V lstm_tanh_fast(const V& z) { return lstm_tanh(z); }

inline at::vec::Vectorized<float> fg_sigmoid_fast(const at::vec::Vectorized<float>& z) {
  using Vf = at::vec::Vectorized<float>;
  Vf s, q;
  lstm_exp_parts<-1>(z, s, q);
  return Vf(1.f) / (Vf(1.f) + at::vec::fmadd(s, q, s));
}

// tanh(z) = m / (m + 2), m = e^2z - 1: relative accuracy down to the tiniest z.
inline at::vec::Vectorized<float> lstm_tanh_fast(const at::vec::Vectorized<float>& z) {
  using Vf = at::vec::Vectorized<float>;
  Vf s, q;
  lstm_exp_parts<2>(z, s, q);
  const Vf m = at::vec::fmadd(s, q, s - Vf(1.f));
  return m / (m + Vf(2.f));
}

// The activations the CPU kernel hands to lstm_cell_forward / lstm_cell_backward of
// row_lstm_scan.h (the CUDA kernel's cell formulas, so the CPU tests exercise them).
struct LstmFastActivations {
  template <typename V>
  static V sigmoid(const V& z) { return fg_sigmoid_fast(z); }
  template <typename V>
  static V tanh(const V& z) { return lstm_tanh_fast(z); }
};

}  // namespace fastgen
