// PixelCNN masked convolution: geometry of the mask, shared by the CPU and CUDA kernels.
//
//   y[n, o, h, w] = b[o] + sum_{(i, j) in taps, ci} W[o, ci, i, j] * M[o, ci, i, j] * x[n, ci, h + i - ch, w + j - cw]
// with (ch, cw) = (kh / 2, kw / 2) and the mask M: 1 on the rows above the centre and left of
// the centre in its row; at the centre 1 iff group(ci) < group(o) (type A) or <= (type B), where
// group(c) = c * G / C over G colour groups; 0 elsewhere (never visited: the kernels skip it).
//
// The kernels visit the used taps as row segments: taps (i, j..j+len-1) read the input row
// h + dy over columns w + dx .. w + dx + len - 1 (contiguous in NHWC memory), so a patch row is
// a few contiguous copies. The input gradient is the same gather over the output gradient with
// the mirrored segments (rows below, columns to the right) and the flipped weight.
#pragma once

#include <cstdint>

#include "fastgen_math.h"

namespace fastgen {

struct TapSegment {
  int dy, dx, len;
};

// The most segments a kernel can need: one per row above the centre plus the centre row.
constexpr int kMaxSegments = 64;

FASTGEN_HOST_DEVICE inline int64_t channel_group(int64_t c, int64_t channels, int64_t groups) {
  return c * groups / channels;
}

// Whether the centre tap connects input channel ci to output channel o.
FASTGEN_HOST_DEVICE inline bool centre_allowed(int64_t o, int64_t ci, int64_t cout, int64_t cin,
                                               int64_t groups, bool type_a) {
  int64_t go = channel_group(o, cout, groups), gi = channel_group(ci, cin, groups);
  return type_a ? gi < go : gi <= go;
}

// Whether any channel pair passes the centre: type B always does; type A iff G > 1 (the last
// output group sees the first input group).
FASTGEN_HOST_DEVICE inline bool centre_used(int64_t groups, bool type_a) { return !type_a || groups > 1; }

// The mask value of tap (i, j) between channels (o, ci).
FASTGEN_HOST_DEVICE inline bool mask_value(int64_t o, int64_t ci, int i, int j, int kh, int kw,
                                           int64_t cout, int64_t cin, int64_t groups, bool type_a) {
  int ch = kh / 2, cw = kw / 2;
  if (i < ch) return true;
  if (i > ch) return false;
  if (j < cw) return true;
  if (j > cw) return false;
  return centre_allowed(o, ci, cout, cin, groups, type_a);
}

// Forward segments: rows i < ch fully, then the centre row left of (and, if used, at) the centre.
// Fills segs and returns their count; the patch width is sum(len) * Cin.
FASTGEN_HOST_DEVICE inline int forward_segments(int kh, int kw, bool centre, TapSegment* segs) {
  int ch = kh / 2, cw = kw / 2, n = 0;
  for (int i = 0; i < ch; ++i) segs[n++] = TapSegment{i - ch, -cw, kw};
  int len = cw + (centre ? 1 : 0);
  if (len > 0) segs[n++] = TapSegment{0, -cw, len};
  return n;
}

// Input-gradient segments: output-gradient rows below (row h + ch - i for i < ch, columns
// w - cw .. w + cw, i.e. taps j = kw - 1 .. 0) and the centre row at/right of the centre.
FASTGEN_HOST_DEVICE inline int backward_input_segments(int kh, int kw, bool centre, TapSegment* segs) {
  int ch = kh / 2, cw = kw / 2, n = 0;
  for (int i = 0; i < ch; ++i) segs[n++] = TapSegment{ch - i, -cw, kw};
  int len = cw + (centre ? 1 : 0);
  if (len > 0) segs[n++] = TapSegment{0, centre ? 0 : 1, len};
  return n;
}

// The tap (i, j) that input-gradient segment s, position p reads (for the CUDA kernel).
FASTGEN_HOST_DEVICE inline void backward_input_tap(int s, int p, int kh, int kw, bool centre, int& i, int& j) {
  int ch = kh / 2, cw = kw / 2;
  if (s < ch) {
    i = s;
    j = kw - 1 - p;
  } else {
    i = ch;
    j = centre ? cw - p : cw - 1 - p;
  }
}

}  // namespace fastgen
