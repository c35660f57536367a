// Row LSTM cell math, shared by the CPU kernel (T = float/double or at::vec::Vectorized of them)
// and the CUDA kernel (T = float/double).
//
// forward, gates in torch.nn.LSTM order with pre-activations z = (zi, zf, zg, zo):
//   i = sigmoid(zi), f = sigmoid(zf), g = tanh(zg), o = sigmoid(zo)
//   c = f * c_prev + i * g,   h = o * tanh(c)
// backward, given dh = dL/dh (from the output and from the next row) and dc_next = dL/dc carried
// back from the next row through its forget gate:
//   dc = dc_next + dh * o * (1 - tanh(c)^2)
//   dzi = dc * g * i (1 - i),  dzf = dc * c_prev * f (1 - f),  dzg = dc * i * (1 - g^2),
//   dzo = dh * tanh(c) * o (1 - o),   dc_prev = dc * f
#pragma once

#include "fastgen_math.h"

namespace fastgen {

// tanh(x) = sign(x) (1 - e) / (1 + e), e = e^-2|x|: one exp, finite for any x (absolute error
// a few ulp of 1; Sleef's vector tanh costs as much as the whole row GEMM here).
template <typename T>
FASTGEN_HOST_DEVICE inline T lstm_tanh(T x) {
  T e = fg_exp(T(-2) * fg_abs(x));
  T t = (T(1) - e) / (T(1) + e);
  return fg_where_nonneg(x, t, T(0) - t);
}

// The activations of the cell math; the CPU kernel passes faster float32 vector ones
// (row_lstm_scan_vec.h) to the same cell formulas.
struct LstmActivations {
  template <typename T>
  FASTGEN_HOST_DEVICE static T sigmoid(T x) { return fg_sigmoid(x); }
  template <typename T>
  FASTGEN_HOST_DEVICE static T tanh(T x) { return lstm_tanh(x); }
};

template <typename T, typename Act = LstmActivations>
FASTGEN_HOST_DEVICE inline void lstm_cell_forward(T zi, T zf, T zg, T zo, T c_prev, T& i, T& f, T& g,
                                                  T& o, T& c, T& h) {
  i = Act::sigmoid(zi);
  f = Act::sigmoid(zf);
  g = Act::tanh(zg);
  o = Act::sigmoid(zo);
  c = f * c_prev + i * g;
  h = o * Act::tanh(c);
}

template <typename T, typename Act = LstmActivations>
FASTGEN_HOST_DEVICE inline void lstm_cell_backward(T dh, T dc_next, T i, T f, T g, T o, T c, T c_prev,
                                                   T& dzi, T& dzf, T& dzg, T& dzo, T& dc_prev) {
  T tc = Act::tanh(c);
  T dc = dc_next + dh * o * (T(1) - tc * tc);
  dzi = dc * g * i * (T(1) - i);
  dzf = dc * c_prev * f * (T(1) - f);
  dzg = dc * i * (T(1) - g * g);
  dzo = dh * tc * o * (T(1) - o);
  dc_prev = dc * f;
}

}  // namespace fastgen
