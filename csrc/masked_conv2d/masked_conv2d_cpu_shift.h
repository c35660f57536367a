// Shifted, zero-padded channels-last copies of activations for the CPU kernels of masked_conv2d
// (masked_conv2d_cpu.cpp), built per chunk of output rows on one thread.
//
// A copy for a valid (kh, kw) convolution whose outputs are the chunk's rows, tap (i, j) of
// output (r, c) reading t[r + oy + i, c + ox + j]: p (nb, C, nr + kh - 1, W + kw - 1) with
// p[n, :, r', c'] = t[n0 + n, :, r0 + r' + oy, c' + ox], zero outside t. Each source row is
// read once, transposed to NHWC (the usual source is NCHW) and cast, then copied into every
// copy's row it lands in (through a ReLU for a layer whose input is relu(t)). Also the chunks
// (bands of output rows) the kernels cut their work into and the loop that runs them.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cpu/vec/vec.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "fastgen_cpu.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastgen {

struct Shift {
  int64_t oy, ox, kh, kw;
};

// Output rows [r0, r0 + nr) of images [n0, n0 + nb): whole images (nr = H) or a band of one.
struct Chunk {
  int64_t n0, nb, r0, nr;
};

// Chunks of about total / (4 threads) output pixels (at least ~1k): whole images when an image
// is smaller, else bands of rows of one image.
inline std::vector<Chunk> make_chunks(int64_t n, int64_t h, int64_t w) {
  std::vector<Chunk> chunks;
  if (n * h * w == 0) return chunks;
  const int64_t target = std::max<int64_t>(1024, n * h * w / (4 * at::get_num_threads()));
  if (h * w < target) {
    const int64_t nb = std::max<int64_t>(1, target / (h * w));
    for (int64_t n0 = 0; n0 < n; n0 += nb) chunks.push_back({n0, std::min(nb, n - n0), 0, h});
  } else {
    const int64_t nr = std::max<int64_t>(1, target / w);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r0 = 0; r0 < h; r0 += nr) chunks.push_back({i, 1, r0, std::min(nr, h - r0)});
  }
  return chunks;
}

// body(chunk, thread) for every chunk on the intra-op threads, each thread taking the next chunk
// when done with one (a thread that loses its core takes fewer instead of holding the rest up).
template <typename F>
void for_each_chunk(const std::vector<Chunk>& chunks, const F& body) {
  std::atomic<size_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), chunks.size());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // (thread-local: each worker's own)
#ifdef _OPENMP
    // oneDNN sizes a primitive by omp_get_max_threads() where it is created; inside a parallel
    // region that is still the outer count. 1 for this worker's task: the primitives the chunks
    // create are the single-threaded ones they run as. (This does not make oneDNN's weight-
    // gradient kernel safe in here, see the backward.)
    const int outer = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    const int tid = at::get_thread_num();
    for (size_t c = next.fetch_add(1); c < chunks.size(); c = next.fetch_add(1)) body(chunks[c], tid);
#ifdef _OPENMP
    omp_set_num_threads(outer);
#endif
  });
}

// Source row t[n, :, r, :] as w pixels of c channels (NHWC) in dtype D, into buf; returns buf,
// or the row itself when t is channels-last in D already. NCHW rows are transposed in 8 x 8 tiles
// (transpose_tiles), so each source row is read once and a tile stays in registers.
template <typename S, typename D>
const D* nhwc_row(const S* t, int64_t s_c, int64_t s_w, int64_t c, int64_t w, D* buf) {
  if (s_c == 1) {
    if constexpr (std::is_same_v<S, D>) {
      if (s_w == c) return t;
    }
    for (int64_t q = 0; q < w; ++q)
      for (int64_t k = 0; k < c; ++k) buf[q * c + k] = static_cast<D>(t[q * s_w + k]);
    return buf;
  }
  if (s_w == 1) {  // an NCHW row: the (c, w) block of channels transposed to (w, c)
    transpose_tiles<S, D>(t, s_c, buf, c, c, w);
    return buf;
  }
  constexpr int64_t kBlock = 16;
  for (int64_t k0 = 0; k0 < c; k0 += kBlock) {
    const int64_t kn = std::min(kBlock, c - k0);
    for (int64_t q = 0; q < w; ++q) {
      const S* px = t + k0 * s_c + q * s_w;
      D* o = buf + q * c + k0;
      for (int64_t k = 0; k < kn; ++k) o[k] = static_cast<D>(px[k * s_c]);
    }
  }
  return buf;
}

// v < 0 ? 0 : v, NaN kept (torch.relu's rule)
template <typename T>
inline T relu_value(T v) {
  return v < T(0) ? T(0) : v;
}

// The copies of relu(t) (relu) or t (N, C, H, W; any strides, float/double/bf16) for chunk ch,
// channels-last in dtype dt: new tensors, or written into dst[0..] (dense channels-last, of the
// copies' shapes). Serial: it runs inside a chunk's worker.
inline std::vector<at::Tensor> chunk_copies(const at::Tensor& t, const Chunk& ch, const std::vector<Shift>& shifts,
                                            at::ScalarType dt, const at::Tensor* dst = nullptr, bool relu = false) {
  const int64_t c = t.size(1), h = t.size(2), w = t.size(3);
  std::vector<at::Tensor> out;
  int64_t lo = h, hi = 0;  // the source rows some copy reads
  for (const Shift& s : shifts) {
    if (dst) out.push_back(dst[out.size()]);
    else
      out.push_back(at::empty({ch.nb, c, ch.nr + s.kh - 1, w + s.kw - 1},
                              t.options().dtype(dt).memory_format(at::MemoryFormat::ChannelsLast)));
    lo = std::min(lo, std::max<int64_t>(0, ch.r0 + s.oy));
    hi = std::max(hi, std::min(h, ch.r0 + ch.nr + s.oy + s.kh - 1));
  }
  AT_DISPATCH_FLOATING_TYPES(dt, "masked_conv2d_copies", [&] {
    using D = scalar_t;
    std::vector<D> buf(w * c);
    for (int64_t n = 0; n < ch.nb; ++n) {
      for (size_t k = 0; k < shifts.size(); ++k) {  // rows outside the image: zero
        const Shift& s = shifts[k];
        const int64_t hp = ch.nr + s.kh - 1, row = (w + s.kw - 1) * c;
        D* base = out[k].mutable_data_ptr<D>() + n * hp * row;
        for (int64_t rp = 0; rp < hp; ++rp) {
          const int64_t r = ch.r0 + rp + s.oy;
          if (r < 0 || r >= h) std::fill(base + rp * row, base + (rp + 1) * row, D(0));
        }
      }
      for (int64_t r = lo; r < hi; ++r) {
        const D* src = nullptr;
        AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.scalar_type(), "masked_conv2d_row", [&] {
          src = nhwc_row(t.const_data_ptr<scalar_t>() + (ch.n0 + n) * t.stride(0) + r * t.stride(2), t.stride(1),
                         t.stride(3), c, w, buf.data());
        });
        if (relu) {  // (in buf: src may be t's own row)
          for (int64_t i = 0; i < w * c; ++i) buf[i] = relu_value(src[i]);
          src = buf.data();
        }
        for (size_t k = 0; k < shifts.size(); ++k) {
          const Shift& s = shifts[k];
          const int64_t hp = ch.nr + s.kh - 1, wp = w + s.kw - 1, rp = r - ch.r0 - s.oy;
          if (rp < 0 || rp >= hp) continue;
          const int64_t q0 = std::clamp<int64_t>(-s.ox, 0, wp), q1 = std::clamp<int64_t>(w - s.ox, q0, wp);
          D* dst = out[k].mutable_data_ptr<D>() + (n * hp + rp) * wp * c;
          std::fill(dst, dst + q0 * c, D(0));
          std::copy(src + (q0 + s.ox) * c, src + (q1 + s.ox) * c, dst + q0 * c);
          std::fill(dst + q1 * c, dst + wp * c, D(0));
        }
      }
    }
  });
  return out;
}

}  // namespace fastgen
