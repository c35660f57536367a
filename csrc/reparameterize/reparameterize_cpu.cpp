// CPU kernels of reparameterize: one pass over memory forward (z and the row KL), one backward.
// Rows (all leading dims) run in parallel; within a row the element math of reparameterize.h
// runs on at::vec vectors of the accumulation type, the tail on scalars.
#include <torch/library.h>

#include "fastgen_cpu.h"
#include "reparameterize/reparameterize.h"
#include "reparameterize/reparameterize_host.h"

namespace fastgen {
namespace {

template <typename scalar_t>
void forward_kernel(const scalar_t* mu, const scalar_t* lv, const scalar_t* eps, scalar_t* z,
                    scalar_t* kl, int64_t rows, int64_t cols) {
  using Block = VecBlock<scalar_t>;
  using acc_t = typename Block::acc_t;
  using AccVec = typename Block::AccVec;
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * cols;
      AccVec acc(acc_t(0));
      int64_t d = 0;
      for (; d + Block::kSize <= cols; d += Block::kSize) {
        auto m = Block::load(mu + base + d), l = Block::load(lv + base + d), e = Block::load(eps + base + d);
        decltype(m) out;
        for (int p = 0; p < Block::kParts; ++p) {
          AccVec term;
          reparameterize_element(m[p], l[p], e[p], out[p], term);
          acc = acc + term;
        }
        Block::store(z + base + d, out);
      }
      acc_t total = at::vec::vec_reduce_all<acc_t>([](AccVec& a, AccVec& b) { return a + b; }, acc);
      for (; d < cols; ++d) {
        acc_t zz, term;
        reparameterize_element<acc_t>(acc_t(mu[base + d]), acc_t(lv[base + d]), acc_t(eps[base + d]), zz, term);
        z[base + d] = scalar_t(zz);
        total += term;
      }
      kl[r] = scalar_t(acc_t(0.5) * total);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* gz, const scalar_t* gk, const scalar_t* mu, const scalar_t* lv,
                     const scalar_t* eps, scalar_t* dmu, scalar_t* dlv, scalar_t* deps, int64_t rows,
                     int64_t cols) {
  using Block = VecBlock<scalar_t>;
  using acc_t = typename Block::acc_t;
  using AccVec = typename Block::AccVec;
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * cols;
      const acc_t k = acc_t(gk[r]);
      const AccVec kv(k);
      int64_t d = 0;
      for (; d + Block::kSize <= cols; d += Block::kSize) {
        auto g = Block::load(gz + base + d), m = Block::load(mu + base + d);
        auto l = Block::load(lv + base + d), e = Block::load(eps + base + d);
        decltype(g) a, b, c;
        for (int p = 0; p < Block::kParts; ++p)
          reparameterize_backward_element(g[p], kv, m[p], l[p], e[p], a[p], b[p], c[p]);
        Block::store(dmu + base + d, a);
        Block::store(dlv + base + d, b);
        if (deps != nullptr) Block::store(deps + base + d, c);
      }
      for (; d < cols; ++d) {
        acc_t a, b, c;
        reparameterize_backward_element<acc_t>(acc_t(gz[base + d]), k, acc_t(mu[base + d]),
                                               acc_t(lv[base + d]), acc_t(eps[base + d]), a, b, c);
        dmu[base + d] = scalar_t(a);
        dlv[base + d] = scalar_t(b);
        if (deps != nullptr) deps[base + d] = scalar_t(c);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> reparameterize_cpu(const at::Tensor& mu_in, const at::Tensor& logvar_in,
                                                      const at::Tensor& eps_in) {
  check_reparameterize_inputs(mu_in, logvar_in, eps_in);
  auto mu = mu_in.contiguous(), logvar = logvar_in.contiguous(), eps = eps_in.contiguous();
  const int64_t cols = mu.size(-1);
  auto z = at::empty(mu.sizes(), mu.options());
  auto kl = at::empty(mu.sizes().slice(0, mu.dim() - 1), mu.options());
  if (cols == 0) {
    kl.zero_();
    return {z, kl};
  }
  const int64_t rows = mu.numel() / cols;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, mu.scalar_type(), "reparameterize_cpu", [&] {
    forward_kernel<scalar_t>(mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(),
                             eps.const_data_ptr<scalar_t>(), z.mutable_data_ptr<scalar_t>(),
                             kl.mutable_data_ptr<scalar_t>(), rows, cols);
  });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_backward_cpu(
    const at::Tensor& grad_z_in, const at::Tensor& grad_kl_in, const at::Tensor& mu_in,
    const at::Tensor& logvar_in, const at::Tensor& eps_in, bool eps_requires_grad) {
  check_reparameterize_backward_inputs(grad_z_in, grad_kl_in, mu_in, logvar_in, eps_in);
  auto gz = grad_z_in.contiguous(), gk = grad_kl_in.contiguous();
  auto mu = mu_in.contiguous(), logvar = logvar_in.contiguous(), eps = eps_in.contiguous();
  const int64_t cols = mu.size(-1);
  auto dmu = at::empty(mu.sizes(), mu.options()), dlv = at::empty(mu.sizes(), mu.options());
  auto deps = eps_requires_grad ? at::empty(mu.sizes(), mu.options()) : at::empty({0}, mu.options());
  if (mu.numel() == 0) return {dmu, dlv, deps};
  const int64_t rows = mu.numel() / cols;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, mu.scalar_type(), "reparameterize_backward_cpu", [&] {
    backward_kernel<scalar_t>(gz.const_data_ptr<scalar_t>(), gk.const_data_ptr<scalar_t>(),
                              mu.const_data_ptr<scalar_t>(), logvar.const_data_ptr<scalar_t>(),
                              eps.const_data_ptr<scalar_t>(), dmu.mutable_data_ptr<scalar_t>(),
                              dlv.mutable_data_ptr<scalar_t>(),
                              eps_requires_grad ? deps.mutable_data_ptr<scalar_t>() : nullptr, rows, cols);
  });
  return {dmu, dlv, deps};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("reparameterize", &fastgen::reparameterize_cpu);
  m.impl("reparameterize_backward", &fastgen::reparameterize_backward_cpu);
}
