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

#if defined(CPU_CAPABILITY_AVX512)
// float exp, inline (see the AVX2 version below for why): the same reduction and polynomial on
// 16 lanes; the scaling by 2^n is one vscalefps, exact into the denormals and inf beyond.
inline at::vec::Vectorized<float> fg_exp(const at::vec::Vectorized<float>& xv) {
  const __m512 x = xv;
  const __m512 xc = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.f)), _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xc);  // ln2 high part
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);      // ln2 low part
  __m512 p = _mm512_set1_ps(1.f / 720.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  __m512 y = _mm512_scalef_ps(p, n);
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(88.72283935546875f), _CMP_GT_OQ), y,
                           _mm512_set1_ps(INFINITY));
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-103.972084045410156f), _CMP_LT_OQ), y,
                           _mm512_setzero_ps());
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
}
#elif defined(CPU_CAPABILITY_AVX2)
// float exp, inline: through the PLT, each Sleef_expf8_u10 call costs several times the math
// here (measured: 3x slower kernels). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and
// the degree-6 Taylor polynomial of e^r (truncation < 1.3e-7 relative), scaled by 2^n in two
// steps so results down to the denormals stay exact; x > 88.72... -> inf, x < -103.98 -> 0,
// NaN -> NaN. Max error about 1 ulp over the whole range (tested against float64 exp).
inline at::vec::Vectorized<float> fg_exp(const at::vec::Vectorized<float>& xv) {
  const __m256 x = xv;
  const __m256 xc = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(89.f)), _mm256_set1_ps(-104.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);  // ln2 high part
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);      // ln2 low part
  __m256 p = _mm256_set1_ps(1.f / 720.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.72283935546875f), _CMP_GT_OQ));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-103.972084045410156f), _CMP_LT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
#endif
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
