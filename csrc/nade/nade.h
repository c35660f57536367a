// NADE step math, shared by the CPU kernel (T = float/double or at::vec::Vectorized of them)
// and the CUDA kernel (T = float/double).
//
// In step order t = 0..D-1, for one example with inputs v (D,):
//   a_0 = c,  a_{t+1} = a_t + W[:, t] v_t          (the running pre-activation, kept in float64)
//   h_t = sigmoid(a_t),  logits[t, l] = V[t, l] . h_t + b[t, l]
// Backward with g = dL/dlogits, walking t = D-1..0 and carrying R = sum_{t' > t} da_{t'}:
//   dh_t = sum_l g[t, l] V[t, l],   da_t = dh_t h_t (1 - h_t)
//   dv_t = W[:, t] . R,   dW[:, t] += v_t R,   dV[t, l] += g[t, l] h_t,   db[t, l] += g[t, l]
//   then R += da_t and a_{t-1} = a_t - W[:, t-1] v_{t-1};   finally dc = R (= sum_t da_t).
// The contribution W[:, t] v_t is rounded to the compute dtype before it enters the float64
// sum, in the forward and (subtracted) in the backward alike: the reference's cumsum adds the
// same rounded products, so a_t matches it bit for bit and the backward's recovery subtracts
// exactly what the forward added.
#pragma once

#include "fastgen_math.h"

namespace fastgen {

// da = dh * sigmoid'(a) written with h = sigmoid(a)
template <typename T>
FASTGEN_HOST_DEVICE inline T nade_preact_grad(T dh, T h) {
  return dh * h * (T(1) - h);
}

}  // namespace fastgen
