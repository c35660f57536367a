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
// max/min propagate NaN (as torch.maximum and at::vec::maximum do; fmaxf and a bare `a > b ? a
// : b` would drop a NaN in a: relu(NaN) must stay NaN in the scalar tail as in the vector body).
FASTGEN_HOST_DEVICE inline float fg_max(float a, float b) { return (a > b || a != a) ? a : b; }
FASTGEN_HOST_DEVICE inline double fg_max(double a, double b) { return (a > b || a != a) ? a : b; }
FASTGEN_HOST_DEVICE inline float fg_min(float a, float b) { return (a < b || a != a) ? a : b; }
FASTGEN_HOST_DEVICE inline double fg_min(double a, double b) { return (a < b || a != a) ? a : b; }
FASTGEN_HOST_DEVICE inline float fg_tanh(float x) { return ::tanhf(x); }
FASTGEN_HOST_DEVICE inline double fg_tanh(double x) { return ::tanh(x); }
// where(x >= 0, a, b)
FASTGEN_HOST_DEVICE inline float fg_where_nonneg(float x, float a, float b) { return x >= 0.f ? a : b; }
FASTGEN_HOST_DEVICE inline double fg_where_nonneg(double x, double a, double b) { return x >= 0.0 ? a : b; }
// where(x <= 0, 0, 1) as a value: 1 for x > 0 and for NaN, as relu's backward (which zeroes the
// gradient where its result is <= 0) lets the gradient through at a NaN
FASTGEN_HOST_DEVICE inline float fg_positive(float x) { return x <= 0.f ? 0.f : 1.f; }
FASTGEN_HOST_DEVICE inline double fg_positive(double x) { return x <= 0.0 ? 0.0 : 1.0; }

}  // namespace fastgen

#if !defined(__CUDACC__) && !defined(__HIPCC__)
#include <ATen/cpu/vec/vec.h>

namespace fastgen {
// Vector versions (CPU): the same names, so the op templates instantiate with Vectorized<T>.
template <typename S>
inline at::vec::Vectorized<S> fg_exp(const at::vec::Vectorized<S>& x) { return x.exp(); }

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// float exp, inline, in at::vec operations (one body for every vector width): through the PLT,
// each Sleef_expf8_u10 call costs several times the math here (measured: 3x slower kernels).
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and the degree-6 Taylor polynomial of e^r
// (truncation < 1.3e-7 relative), scaled by 2^n in two steps so results down to the denormals
// stay exact; x > 88.72... -> inf, x < -103.98 -> 0, NaN -> NaN. Max error about 1 ulp over the
// whole range (tested against float64 exp).
inline at::vec::Vectorized<float> fg_exp(const at::vec::Vectorized<float>& x) {
  using Vf = at::vec::Vectorized<float>;
  using Vi = at::vec::Vectorized<int32_t>;
  const Vf xc = at::vec::clamp(x, Vf(-104.f), Vf(89.f));
  const Vf n = (xc * Vf(1.44269504088896341f)).round();
  Vf r = at::vec::fmadd(n, Vf(-0.693145751953125f), xc);  // ln2 high part: n * hi is exact
  r = at::vec::fmadd(n, Vf(-1.428606765330187e-06f), r);   // ln2 low part
  Vf p(1.f / 720.f);
  for (float c : {1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f}) p = at::vec::fmadd(p, r, Vf(c));
  const Vi ni = at::vec::convert_to_int_of_same_size(n);
  const Vi n1 = ni >> Vi(1), n2 = ni - n1;
  const Vf s1 = at::vec::cast<float>((n1 + Vi(127)) << Vi(23));  // 2^n1
  const Vf s2 = at::vec::cast<float>((n2 + Vi(127)) << Vi(23));  // 2^n2
  // the clamp ends need no special case: e^89 overflows to inf and e^-104 rounds to 0 on their own
  return Vf::blendv(p * s1 * s2, x, x.isnan());
}
#endif

// e^t = s (1 + q) for float vectors with t in [-87, 88] (the caller clamps; at::vec::clamp lets
// NaN through, and a NaN t gives a NaN q): s = 2^n and q = e^r - 1 with t = n ln2 + r,
// n = round(t / ln2) by the 1.5 * 2^23 rounding trick, |r| <= ln2 / 2, e^r - 1 by Cephes' expf
// polynomial (about 1 ulp). In that range s is a normal float and s (1 + q) is finite, all the
// fast sigmoid and tanh of the LSTM and NADE kernels need (they saturate correctly at the ends);
// keeping q apart gives e^t - 1 = s q + (s - 1) without cancellation near 0.
inline void fg_exp_parts(const at::vec::Vectorized<float>& t, at::vec::Vectorized<float>& s,
                         at::vec::Vectorized<float>& q) {
  using Vf = at::vec::Vectorized<float>;
  using Vi = at::vec::Vectorized<int32_t>;
  const Vf magic(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const Vf n = at::vec::fmadd(t, Vf(1.44269504088896341f), magic) - magic;
  Vf r = at::vec::fmadd(n, Vf(-0.693145751953125f), t);  // ln2 split in two: n * hi is exact
  r = at::vec::fmadd(n, Vf(-1.428606765330187e-06f), r);
  Vf p(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = at::vec::fmadd(p, r, Vf(c));
  q = at::vec::fmadd(p, r * r, r);
  s = at::vec::cast<float>(at::vec::convert_to_int_of_same_size(n + Vf(127.f)) << Vi(23));  // 2^n
}

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
  return V::blendv(V(S(1)), V(S(0)), x <= V(S(0)));
}
}  // namespace fastgen
#endif

// --- composite functions: after every overload above, so that they instantiate for at::vec
// types too (the calls inside a template resolve at its definition; no ADL into fastgen) -------
#include <type_traits>

namespace fastgen {

// The scalar type behind T (float, double, or the S of at::vec::Vectorized<S>).
template <typename T>
struct fg_scalar {
  using type = T;
};
#if !defined(__CUDACC__) && !defined(__HIPCC__)
template <typename S>
struct fg_scalar<at::vec::Vectorized<S>> {
  using type = S;
};
#endif

// sigmoid(x) without overflow: e = e^-|x|; x >= 0: 1/(1+e), else e/(1+e).
template <typename T>
FASTGEN_HOST_DEVICE inline T fg_sigmoid(T x) {
  T e = fg_exp(T(0) - fg_abs(x));
  T r = T(1) / (T(1) + e);
  return fg_where_nonneg(x, r, e * r);
}

// 2 atanh(t) = log((1 + t) / (1 - t)) for t in [0, 1/3]: 2 (t + t^3/3 + t^5/5 + ...), truncated
// where 9^-k / (2k+1) drops below half an ulp (k <= 6 for float, k <= 16 for double). With
// t = e / (2 + e) this is log1p(e) for e in [0, 1]: on the CPU about 4x cheaper than Sleef's
// log1p and as accurate (the only roundings are in t).
template <typename T>
FASTGEN_HOST_DEVICE inline T fg_two_atanh(T t) {
  constexpr bool kDouble = std::is_same_v<typename fg_scalar<T>::type, double>;
  constexpr int kTerms = kDouble ? 16 : 6;
  // The polynomial in z = t^2 with coefficients 1/(2k+1), by Estrin's scheme (pairs, then pairs
  // of pairs, ...): a dependency chain of log2 length instead of Horner's linear one.
  constexpr int kCoeffs = kTerms + 1;
  T a[kCoeffs];
  for (int k = 0; k < kCoeffs; ++k) a[k] = T(1.0 / (2 * k + 1));
  T z = t * t;
  int m = kCoeffs;
  while (m > 1) {
    for (int i = 0; i < m / 2; ++i) a[i] = a[2 * i] + a[2 * i + 1] * z;
    if (m % 2) a[m / 2] = a[m - 1];
    m = (m + 1) / 2;
    z = z * z;
  }
  return T(2) * t * a[0];
}

// The logistic function's pieces at y, exact and finite for any finite y, from one e = e^-|y| in
// (0, 1] and one division: tail = log1p(e), so softplus(y) = log(1 + e^y) = max(y, 0) + tail;
// big = 1/(1+e) = sigmoid(|y|) and small = e/(1+e) = sigmoid(-|y|), so sigmoid(y) is big for
// y >= 0, else small, and 1 - sigmoid(y) the other one, each to full relative precision (no
// 1 - 0.999999998). q = 1/((1+e)(2+e)) gives both 1/(1+e) and the series' t = e/(2+e). The
// tail comes apart so that a caller can cancel max(y, 0) exactly first (a Bernoulli
// log-likelihood).
template <typename T>
FASTGEN_HOST_DEVICE inline void fg_logistic_parts(T y, T& tail, T& big, T& small) {
  T e = fg_exp(T(0) - fg_abs(y));
  T u = T(1) + e, v = T(2) + e;
  T q = T(1) / (u * v);
  big = v * q;
  small = e * big;
  tail = fg_two_atanh(e * u * q);
}

}  // namespace fastgen
