// CPU kernel of bernoulli_log_prob: one pass over logits (and x) writing the row sums and, when
// asked, the gradient. Rows run in parallel; within a row the element math of
// bernoulli_log_prob.h runs on at::vec vectors of the accumulation type (float for bfloat16),
// the tail on scalars; each row's sum is added up in float64 (784 terms of a binarized MNIST
// image: no float32 drift against the reference's sum).
#include <torch/library.h>

#include "bernoulli_log_prob/bernoulli_log_prob.h"
#include "bernoulli_log_prob/bernoulli_log_prob_host.h"
#include "fastgen_cpu.h"

namespace fastgen {
namespace {

template <typename scalar_t>
void forward_kernel(const scalar_t* l, const scalar_t* x, scalar_t* out, scalar_t* grad, int64_t rows,
                    int64_t x_rows, int64_t cols) {
  using Block = VecBlock<scalar_t>;
  using acc_t = typename Block::acc_t;
  using AccVec = typename Block::AccVec;
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* lr = l + r * cols;
      const scalar_t* xr = x + (r % x_rows) * cols;
      scalar_t* gr = grad == nullptr ? nullptr : grad + r * cols;
      double total = 0;
      int64_t d = 0;
      for (; d + Block::kSize <= cols; d += Block::kSize) {
        auto lv = Block::load(lr + d), xv = Block::load(xr + d);
        decltype(lv) g;
        AccVec acc(acc_t(0));
        for (int p = 0; p < Block::kParts; ++p) {
          AccVec term;
          bernoulli_log_prob_element(lv[p], xv[p], term, g[p]);
          acc = acc + term;
        }
        if (gr != nullptr) Block::store(gr + d, g);
        total += static_cast<double>(at::vec::vec_reduce_all<acc_t>([](AccVec& a, AccVec& b) { return a + b; }, acc));
      }
      for (; d < cols; ++d) {
        acc_t term, g;
        bernoulli_log_prob_element<acc_t>(acc_t(lr[d]), acc_t(xr[d]), term, g);
        if (gr != nullptr) gr[d] = scalar_t(g);
        total += static_cast<double>(term);
      }
      out[r] = scalar_t(total);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> bernoulli_log_prob_cpu(const at::Tensor& logits_in, const at::Tensor& x_in,
                                                          bool logits_grad) {
  check_bernoulli_log_prob_inputs(logits_in, x_in);
  auto logits = logits_in.contiguous(), x = x_in.contiguous();
  const int64_t cols = logits.size(-1);
  auto out = at::empty(logits.sizes().slice(0, logits.dim() - 1), logits.options());
  auto grad = logits_grad ? at::empty(logits.sizes(), logits.options()) : at::empty({0}, logits.options());
  if (cols == 0 || logits.numel() == 0) {
    out.zero_();
    return {out, grad};
  }
  const int64_t rows = logits.numel() / cols, x_rows = x.numel() / cols;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, logits.scalar_type(), "bernoulli_log_prob_cpu", [&] {
    forward_kernel<scalar_t>(logits.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>(),
                             logits_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr, rows, x_rows, cols);
  });
  return {out, grad};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("bernoulli_log_prob", &fastgen::bernoulli_log_prob_cpu);
}
