// CPU helpers shared by the fastgen CPU kernels: contiguous blocks of any floating dtype loaded
// as vectors of its accumulation type (bf16 -> two float vectors), and stored back.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <type_traits>

#include "fastgen_math.h"

namespace fastgen {

// Block I/O: a block holds Vectorized<T>::size() elements of T, seen as kParts vectors of acc_t.
template <typename T>
struct VecBlock {
  using acc_t = at::opmath_type<T>;
  using AccVec = at::vec::Vectorized<acc_t>;
  static constexpr int kParts = 1;
  static constexpr int64_t kSize = at::vec::Vectorized<T>::size();
  static std::array<AccVec, 1> load(const T* p) { return {AccVec::loadu(p)}; }
  static void store(T* p, const std::array<AccVec, 1>& v) { v[0].store(p); }
};

template <>
struct VecBlock<at::BFloat16> {
  using acc_t = float;
  using AccVec = at::vec::Vectorized<float>;
  static constexpr int kParts = 2;
  static constexpr int64_t kSize = at::vec::Vectorized<at::BFloat16>::size();
  static std::array<AccVec, 2> load(const at::BFloat16* p) {
    auto pair = at::vec::convert_to_float<at::BFloat16>(at::vec::Vectorized<at::BFloat16>::loadu(p));
    return {std::get<0>(pair), std::get<1>(pair)};
  }
  static void store(at::BFloat16* p, const std::array<AccVec, 2>& v) {
    at::vec::convert_from_float<at::BFloat16>(v[0], v[1]).store(p);
  }
};

// dst (cols, rows) = src (rows, cols)^T, cast to D; lds, ldd: row strides. float by
// at::vec::transpose_mxn's register shuffles (16 x 16 blocks in AVX-512 builds, else 8 x 8
// tiles), the rest element by element in 8 x 8 tiles: ATen's copy of a transposed view walks
// one side with a large stride, several times slower. (With AVX-512, GCC 12 warns
// -Wmaybe-uninitialized inside torch's header for it; the shuffles are fine.)
template <typename S, typename D>
void transpose_tiles(const S* src, int64_t lds, D* dst, int64_t ldd, int64_t rows, int64_t cols) {
#if defined(CPU_CAPABILITY_AVX512)
  // ATen's AVX-512 float transpose works in 16 x 16 register blocks with masked edges (its
  // 8 x 8 form is one such masked block, four times the work per element): whole matrix at once
  if constexpr (std::is_same_v<S, float> && std::is_same_v<D, float>) {
    return at::vec::transpose_mxn<float>(src, lds, dst, ldd, static_cast<int>(rows), static_cast<int>(cols));
  }
#endif
  constexpr int64_t B = 8;
  for (int64_t i0 = 0; i0 < rows; i0 += B) {
    const int64_t i1 = std::min(rows, i0 + B);
    for (int64_t j0 = 0; j0 < cols; j0 += B) {
      const int64_t j1 = std::min(cols, j0 + B);
      if constexpr (std::is_same_v<S, float> && std::is_same_v<D, float>) {
        if (i1 - i0 == B && j1 - j0 == B) {
          at::vec::transpose_mxn<float, B, B>(src + i0 * lds + j0, lds, dst + j0 * ldd + i0, ldd);
          continue;
        }
      }
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * ldd + i] = static_cast<D>(src[i * lds + j]);
    }
  }
}

// Grain size for at::parallel_for over rows of `cols` elements: about 32K elements a task.
inline int64_t row_grain(int64_t cols) {
  int64_t c = cols > 0 ? cols : 1;
  int64_t g = 32768 / c;
  return g > 0 ? g : 1;
}

}  // namespace fastgen
