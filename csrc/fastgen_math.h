// Shared element math for fastgen kernels.
//
// Op headers (csrc/<op>/<op>.h) write their per-element math once, as templates over a value
// type T, using only + - * / and the fg_* functions below. The same template then runs
//   - on the GPU with T = float/double (FASTGEN_HOST_DEVICE),
//   - on the CPU with T = at::vec::Vectorized<float/double> (the vector body) and with plain
//     float/double (the tail),
// so the CPU tests exercise the exact math the CUDA kernels run.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTGEN_HOST_DEVICE __host__ __device__
#else
#define FASTGEN_HOST_DEVICE
#endif

namespace fastgen {

// Scalar versions (host and device).
FASTGEN_HOST_DEVICE inline float fg_exp(float x) { return ::expf(x); }
FASTGEN_HOST_DEVICE inline double fg_exp(double x) { return ::exp(x); }
FASTGEN_HOST_DEVICE inline float fg_log1p(float x) { return ::log1pf(x); }
FASTGEN_HOST_DEVICE inline double fg_log1p(double x) { return ::log1p(x); }
FASTGEN_HOST_DEVICE inline float fg_abs(float x) { return ::fabsf(x); }
FASTGEN_HOST_DEVICE inline double fg_abs(double x) { return ::fabs(x); }
FASTGEN_HOST_DEVICE inline float fg_max(float a, float b) { return a > b ? a : b; }
FASTGEN_HOST_DEVICE inline double fg_max(double a, double b) { return a > b ? a : b; }
FASTGEN_HOST_DEVICE inline float fg_min(float a, float b) { return a < b ? a : b; }
FASTGEN_HOST_DEVICE inline double fg_min(double a, double b) { return a < b ? a : b; }
FASTGEN_HOST_DEVICE inline float fg_tanh(float x) { return ::tanhf(x); }
FASTGEN_HOST_DEVICE inline double fg_tanh(double x) { return ::tanh(x); }
// where(x >= 0, a, b)
FASTGEN_HOST_DEVICE inline float fg_where_nonneg(float x, float a, float b) { return x >= 0.f ? a : b; }
FASTGEN_HOST_DEVICE inline double fg_where_nonneg(double x, double a, double b) { return x >= 0.0 ? a : b; }
// where(x > 0, 1, 0) as a value
FASTGEN_HOST_DEVICE inline float fg_positive(float x) { return x > 0.f ? 1.f : 0.f; }
FASTGEN_HOST_DEVICE inline double fg_positive(double x) { return x > 0.0 ? 1.0 : 0.0; }

// softplus(x) = log(1 + e^x), exact and finite for any x: max(x, 0) + log1p(e^-|x|).
template <typename T>
FASTGEN_HOST_DEVICE inline T fg_softplus(T x) {
  return fg_max(x, T(0)) + fg_log1p(fg_exp(T(0) - fg_abs(x)));
}

// sigmoid(x) without overflow: e = e^-|x|; x >= 0: 1/(1+e), else e/(1+e).
template <typename T>
FASTGEN_HOST_DEVICE inline T fg_sigmoid(T x) {
  T e = fg_exp(T(0) - fg_abs(x));
  T r = T(1) / (T(1) + e);
  return fg_where_nonneg(x, r, e * r);
}

}  // namespace fastgen

#if !defined(__CUDACC__) && !defined(__HIPCC__)
#include <ATen/cpu/vec/vec.h>

namespace fastgen {
// Vector versions (CPU): the same names, so the op templates instantiate with Vectorized<T>.
template <typename S>
inline at::vec::Vectorized<S> fg_exp(const at::vec::Vectorized<S>& x) { return x.exp(); }
template <typename S>
inline at::vec::Vectorized<S> fg_log1p(const at::vec::Vectorized<S>& x) { return x.log1p(); }
template <typename S>
inline at::vec::Vectorized<S> fg_abs(const at::vec::Vectorized<S>& x) { return x.abs(); }
template <typename S>
inline at::vec::Vectorized<S> fg_tanh(const at::vec::Vectorized<S>& x) { return x.tanh(); }
template <typename S>
inline at::vec::Vectorized<S> fg_max(const at::vec::Vectorized<S>& a, const at::vec::Vectorized<S>& b) {
  return at::vec::maximum(a, b);
}
template <typename S>
inline at::vec::Vectorized<S> fg_min(const at::vec::Vectorized<S>& a, const at::vec::Vectorized<S>& b) {
  return at::vec::minimum(a, b);
}
template <typename S>
inline at::vec::Vectorized<S> fg_where_nonneg(const at::vec::Vectorized<S>& x,
                                              const at::vec::Vectorized<S>& a,
                                              const at::vec::Vectorized<S>& b) {
  return at::vec::Vectorized<S>::blendv(b, a, x >= at::vec::Vectorized<S>(S(0)));
}
template <typename S>
inline at::vec::Vectorized<S> fg_positive(const at::vec::Vectorized<S>& x) {
  using V = at::vec::Vectorized<S>;
  return V::blendv(V(S(0)), V(S(1)), x > V(S(0)));
}
}  // namespace fastgen
#endif
