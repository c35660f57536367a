// Vector helpers of the nade CPU kernel (any at::vec width): row I/O with a ragged end, the
// float64 running sums seen as vectors of the compute type, a fast float32 sigmoid, and the
// transposition and prefetching of blocks of W's columns.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fastgen_cpu.h"
#include "nade/nade.h"

namespace fastgen {
namespace nade_vec {  // names private to the nade CPU kernel

// Vector I/O over a row of H: whole vectors in the body (Full, no count to test), a partial
// one (count k, zero-filled lanes) at the ragged end. The passes below are generic lambdas over
// the count type, instantiated once for each.
struct Full {};

template <typename T>
inline at::vec::Vectorized<T> ld(const T* p, Full) { return at::vec::Vectorized<T>::loadu(p); }
template <typename T>
inline at::vec::Vectorized<T> ld(const T* p, int64_t k) {
  return k > 0 ? at::vec::Vectorized<T>::loadu(p, k) : at::vec::Vectorized<T>(T(0));
}
template <typename T>
inline void st(const at::vec::Vectorized<T>& x, T* p, Full) { x.store(p); }
template <typename T>
inline void st(const at::vec::Vectorized<T>& x, T* p, int64_t k) {
  if (k > 0) x.store(p, k);
}

// body(j, Full()) over the whole vectors of [0, n), then body(j, k) once for the k left over.
template <typename T, typename F>
inline void for_vectors(int64_t n, const F& body) {
  constexpr int64_t VS = at::vec::Vectorized<T>::size();
  int64_t j = 0;
  for (; j + VS <= n; j += VS) body(j, Full());
  if (j < n) body(j, n - j);
}

// Sum of the lanes. By value: with a reference, GCC kept accumulators that end here in memory,
// storing them on every iteration of the loop that updates them.
template <typename C>
inline C reduce_sum(at::vec::Vectorized<C> x) {
  using Vec = at::vec::Vectorized<C>;
  return at::vec::vec_reduce_all<C>([](Vec& p, Vec& q) { return p + q; }, x);
}

// Fetches column t of rows [j0, j1) of m (rows of stride ld): one cache line per row, read
// (W) or written (dW) by the next block's transposition. Issued a step ahead, whose work hides
// their latency; fetched a block ahead, they were evicted again before use.
template <typename C>
inline void prefetch_column(const C* m, int64_t ld, int64_t j0, int64_t j1, int64_t t, bool write) {
  if (write)
    for (int64_t j = j0; j < j1; ++j) __builtin_prefetch(m + j * ld + t, 1, 3);
  else
    for (int64_t j = j0; j < j1; ++j) __builtin_prefetch(m + j * ld + t, 0, 3);
}

// float64 running sums seen as vectors of the compute type C: one C vector = two double
// vectors for float (converted in registers), the same vector for double.
template <typename C>
struct Acc;

template <>
struct Acc<double> {
  using Vec = at::vec::Vectorized<double>;
  template <typename K>
  static Vec load(const double* p, K k) { return ld(p, k); }
  template <typename K>
  static void add(double* p, const Vec& x, K k) { st(ld(p, k) + x, p, k); }
  template <typename K>
  static Vec add_get(double* p, const Vec& x, K k) {  // p += x; returns the new value
    const Vec y = ld(p, k) + x;
    st(y, p, k);
    return y;
  }
};

template <>
struct Acc<float> {
  using Vec = at::vec::Vectorized<float>;
  using Vd = at::vec::Vectorized<double>;
  static constexpr int64_t kHalf = Vd::size();
  static_assert(Vec::size() == 2 * Vd::size(), "a float vector holds two double vectors");

  static Vec to_float(const Vd& lo, const Vd& hi) {
#if defined(CPU_CAPABILITY_AVX512)
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
#elif defined(CPU_CAPABILITY_AVX2)
    return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
#else
    double d[2 * kHalf];
    float f[2 * kHalf];
    lo.store(d);
    hi.store(d + kHalf);
    for (int64_t i = 0; i < 2 * kHalf; ++i) f[i] = static_cast<float>(d[i]);
    return Vec::loadu(f);
#endif
  }
  static void to_double(const Vec& x, Vd& lo, Vd& hi) {
#if defined(CPU_CAPABILITY_AVX512)
    lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1));
#elif defined(CPU_CAPABILITY_AVX2)
    lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
    hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
#else
    float f[2 * kHalf];
    double d[2 * kHalf];
    x.store(f);
    for (int64_t i = 0; i < 2 * kHalf; ++i) d[i] = f[i];
    lo = Vd::loadu(d);
    hi = Vd::loadu(d + kHalf);
#endif
  }
  static Vec load(const double* p, Full) { return to_float(Vd::loadu(p), Vd::loadu(p + kHalf)); }
  static Vec load(const double* p, int64_t k) {
    const int64_t k1 = std::min(k, kHalf), k2 = k - k1;
    return to_float(ld(p, k1), ld(p + kHalf, k2));
  }
  static void add(double* p, const Vec& x, Full) {
    Vd lo, hi;
    to_double(x, lo, hi);
    (Vd::loadu(p) + lo).store(p);
    (Vd::loadu(p + kHalf) + hi).store(p + kHalf);
  }
  static void add(double* p, const Vec& x, int64_t k) {
    const int64_t k1 = std::min(k, kHalf), k2 = k - k1;
    Vd lo, hi;
    to_double(x, lo, hi);
    st(ld(p, k1) + lo, p, k1);
    st(ld(p + kHalf, k2) + hi, p + kHalf, k2);
  }
  // p += x (in float64); returns the new value rounded to float
  static Vec add_get(double* p, const Vec& x, Full) {
    Vd lo, hi;
    to_double(x, lo, hi);
    lo = Vd::loadu(p) + lo;
    hi = Vd::loadu(p + kHalf) + hi;
    lo.store(p);
    hi.store(p + kHalf);
    return to_float(lo, hi);
  }
  static Vec add_get(double* p, const Vec& x, int64_t k) {
    const int64_t k1 = std::min(k, kHalf), k2 = k - k1;
    Vd lo, hi;
    to_double(x, lo, hi);
    lo = ld(p, k1) + lo;
    hi = ld(p + kHalf, k2) + hi;
    st(lo, p, k1);
    st(hi, p + kHalf, k2);
    return to_float(lo, hi);
  }
};

// sigmoid for the CPU passes: nade.h's (the CUDA kernel's math) except for float32 vectors in
// AVX2/AVX-512 builds, where it is 1 / (1 + e^-x) with e^t for t = -x clamped to [-87, 88]
// (fastgen_math.h's fg_exp_parts; x < -87.3 gives 0 or a denormal, x > 87 gives 1) and the
// division by rcp14 and a Newton step (AVX-512; exact at d = 1) or a division (AVX2). NaN stays
// NaN (the clamp passes it through). About 20 vector
// instructions where the generic form takes 35: the sigmoid is most of each pass.
template <typename V>
inline V sigmoid_cpu(const V& x) { return fg_sigmoid(x); }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
inline at::vec::Vectorized<float> sigmoid_cpu(const at::vec::Vectorized<float>& x) {
  using Vf = at::vec::Vectorized<float>;
  Vf s, q;
  fg_exp_parts(at::vec::clamp(Vf(0.f) - x, Vf(-87.f), Vf(88.f)), s, q);
  const Vf d = at::vec::fmadd(q + Vf(1.f), s, Vf(1.f));  // 1 + e^-x rounded once (1 - h is tiny near h = 1)
#if defined(CPU_CAPABILITY_AVX512)
  Vf y = _mm512_rcp14_ps(d);  // 14 bits; one Newton step gives about 28
  y = y * at::vec::fnmadd(d, y, Vf(2.f));
#else
  // a division, correctly rounded: rcp_ps(1) is 12 bits short of 1 and Newton steps stop one ulp
  // below it, which would give a saturated unit h = 1 - 2^-24 and h (1 - h) != 0 in the backward
  const Vf y = Vf(1.f) / d;
#endif
  return y;
}
#endif

// dst (cols, rows) = src (rows, cols)^T; lds, ldd: row strides. The kernel transposes W a block
// of columns at a time and dW back, some 1,600 tiles of 16 x 16 per call at MNIST size: float
// goes through register tiles here (16 x 16 with AVX-512, 8 x 8 with AVX2, masked at the
// edges), several times faster than ATen's transpose_mxn<float>, which works through arrays in
// memory; other types and the default build take fastgen_cpu.h's transpose_tiles.
#if defined(CPU_CAPABILITY_AVX512)
inline void transpose_tile(__m512 (&r)[16]) {  // r[i] = row i -> r[i] = column i
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 4; ++k) {
      t[8 * i + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + k + 4], 0x88);
      t[8 * i + k + 4] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + k + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
  }
}
#elif defined(CPU_CAPABILITY_AVX2)
inline void transpose_tile(__m256 (&r)[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
  }
}
inline __m256i lane_mask(int64_t n) {  // the first n of 8 lanes
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

template <typename T>
inline void transpose_block(const T* src, int64_t lds, T* dst, int64_t ldd, int64_t rows, int64_t cols) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
#if defined(CPU_CAPABILITY_AVX512)
    constexpr int64_t S = 16;
    __m512 r[S];
#else
    constexpr int64_t S = 8;
    __m256 r[S];
#endif
    for (int64_t r0 = 0; r0 < rows; r0 += S)
      for (int64_t c0 = 0; c0 < cols; c0 += S) {
        const int64_t nr = std::min(S, rows - r0), nc = std::min(S, cols - c0);
        const float* s = src + r0 * lds + c0;
        float* d = dst + c0 * ldd + r0;
#if defined(CPU_CAPABILITY_AVX512)
        const __mmask16 cm = static_cast<__mmask16>((1u << nc) - 1), rm = static_cast<__mmask16>((1u << nr) - 1);
        for (int64_t i = 0; i < S; ++i) r[i] = i < nr ? _mm512_maskz_loadu_ps(cm, s + i * lds) : _mm512_setzero_ps();
        transpose_tile(r);
        for (int64_t i = 0; i < nc; ++i) _mm512_mask_storeu_ps(d + i * ldd, rm, r[i]);
#else
        const __m256i cm = lane_mask(nc), rm = lane_mask(nr);
        for (int64_t i = 0; i < S; ++i) r[i] = i < nr ? _mm256_maskload_ps(s + i * lds, cm) : _mm256_setzero_ps();
        transpose_tile(r);
        for (int64_t i = 0; i < nc; ++i) _mm256_maskstore_ps(d + i * ldd, rm, r[i]);
#endif
      }
    return;
  }
#endif
  transpose_tiles<T, T>(src, lds, dst, ldd, rows, cols);
}

}  // namespace nade_vec
}  // namespace fastgen
