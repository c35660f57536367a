// GEMMs for the CPU kernels: y = a b^T (+ bias) through oneDNN's brgemm matmul where it applies.
//
// Why: on this project's AVX-512 CPUs torch's at::mm (MKL) runs its AVX2 code, about 210
// GFLOP/s on 2 cores, while oneDNN (shipped inside torch, the engine of F.conv2d on CPU) reaches
// about 460 GFLOP/s on the same shapes. torch exposes oneDNN's matmul as the registered op
// mkldnn::_linear_pointwise; it is called here through the dispatcher (boxed: its C++ signature is
// not a public header), which costs a few microseconds a call, so the kernels use it for GEMMs of
// tens of microseconds and more. Contract of that op, as measured: a is made contiguous by the op;
// b must be contiguous or a transposed contiguous view (any other strides drop oneDNN to its
// reference kernel, ~1000x slower), so linear_nt copies such a b first. float32 and bfloat16
// (fp32 accumulation; bf16 in AVX-512 builds) go to oneDNN; float64, or a torch without oneDNN, goes to at::mm.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/native/CPUBlas.h>

#include <optional>

namespace fastgen {

namespace detail {
inline const c10::OperatorHandle* onednn_linear_op() {
  static const std::optional<c10::OperatorHandle> op = []() -> std::optional<c10::OperatorHandle> {
    if (!at::hasMKLDNN()) return std::nullopt;
    return c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  }();
  return op.has_value() ? &*op : nullptr;
}

// b as oneDNN takes it: contiguous (n, k) or the transpose of a contiguous (k, n).
inline at::Tensor onednn_weight(const at::Tensor& b) {
  if (b.is_contiguous() || b.t().is_contiguous()) return b;
  return b.contiguous();
}
}  // namespace detail

// Whether linear_nt runs oneDNN for this dtype (else at::mm).
// bfloat16 only in an AVX-512 build: torch's oneDNN bf16 linear refuses CPUs without
// avx512bw/vl/dq (or avx_ne_convert), and an AVX-512 build implies them.
inline bool onednn_gemm(at::ScalarType dtype) {
#if defined(CPU_CAPABILITY_AVX512)
  constexpr bool kBf16 = true;
#else
  constexpr bool kBf16 = false;
#endif
  return (dtype == at::kFloat || (kBf16 && dtype == at::kBFloat16)) && detail::onednn_linear_op() != nullptr;
}

// a (m, k), b (n, k), bias (n) or none -> a b^T + bias, a new contiguous (m, n) tensor.
inline at::Tensor linear_nt(const at::Tensor& a, const at::Tensor& b,
                            const std::optional<at::Tensor>& bias = std::nullopt) {
  if (a.size(0) == 0 || b.size(0) == 0 || a.size(1) == 0 || !onednn_gemm(a.scalar_type())) {
    return bias.has_value() ? at::addmm(*bias, a, b.t()) : at::mm(a, b.t());
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel's GEMM records no graph
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(a);
  stack.emplace_back(detail::onednn_weight(b));
  stack.emplace_back(bias.has_value() ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(c10::IValue(std::string("none")));
  stack.emplace_back(c10::IValue(c10::List<std::optional<at::Scalar>>()));
  stack.emplace_back(c10::IValue());
  detail::onednn_linear_op()->callBoxed(stack);
  return stack[0].toTensor();
}

// c (m, n) = a (m, k) b (k, n) (+ c if accumulate) on raw row-major matrices with leading
// dimensions lda, ldb, ldc, on the calling thread, allocating nothing: for the many small
// per-row GEMMs of the scans, where linear_nt's dispatcher call and output allocation (~10 us)
// would be a tenth of each product. float32 runs ATen's batch-reduce GEMM (oneDNN's brgemm
// ukernel where the CPU has it: linear_nt's engine without its per-call cost, 267-280 GFLOP/s
// on one core here for (256, 224, 192); ATen falls back to its BLAS gemm elsewhere); float64
// addmm_ on views of the matrices.
inline void gemm_rowmajor(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                          int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, /*is_vnni=*/false);
}

inline void gemm_rowmajor(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
                          int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto c_t = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  c_t.addmm_(at::from_blob(const_cast<double*>(a), {m, k}, {lda, 1}, opts),
             at::from_blob(const_cast<double*>(b), {k, n}, {ldb, 1}, opts), accumulate ? 1.0 : 0.0, 1.0);
}

}  // namespace fastgen
