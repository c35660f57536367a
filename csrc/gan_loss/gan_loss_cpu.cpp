// CPU kernels of the fused GAN losses: one pass over each logits tensor computes the loss terms
// and writes the gradient of the mean. Each tensor is cut into fixed chunks of kChunk elements
// (independent of the thread count, so the result is deterministic); a chunk is reduced with
// at::vec vectors of the accumulation type (fp32 for bf16) and the chunk sums are combined in
// order in double. Chunks of both tensors run in one at::parallel_for.
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fastgen_host.h"
#include "fastgen_cpu.h"
#include "gan_loss/gan_loss.h"
#include "gan_loss/gan_loss_host.h"

namespace fastgen {
namespace {

constexpr int64_t kChunk = 16384;        // a multiple of every Vectorized size
constexpr int64_t kSerialBelow = 65536;  // fewer elements in all: a thread fork costs more

template <typename scalar_t>
struct Segment {
  const scalar_t* x;
  scalar_t* grad;  // nullptr: gradient not wanted
  int64_t n;
  GanTerm term;
};

template <typename scalar_t, GanFamily F>
double chunk_sum(const Segment<scalar_t>& seg, int64_t begin, int64_t end) {
  using Block = VecBlock<scalar_t>;
  using acc_t = typename Block::acc_t;
  using AccVec = typename Block::AccVec;
  const acc_t s = acc_t(seg.term.s), c = acc_t(seg.term.c);
  const acc_t csn = acc_t(seg.term.c * seg.term.s / double(seg.n));
  const AccVec sv(s), cv(c), csnv(csn);
  AccVec acc(acc_t(0));
  int64_t i = begin;
  for (; i + Block::kSize <= end; i += Block::kSize) {
    auto x = Block::load(seg.x + i);
    decltype(x) g;
    for (int p = 0; p < Block::kParts; ++p) {
      AccVec l;
      gan_term_element<F>(x[p], sv, cv, csnv, l, g[p]);
      acc = acc + l;
    }
    if (seg.grad != nullptr) Block::store(seg.grad + i, g);
  }
  acc_t total = at::vec::vec_reduce_all<acc_t>([](AccVec& a, AccVec& b) { return a + b; }, acc);
  for (; i < end; ++i) {
    acc_t l, g;
    gan_term_element<F, acc_t>(acc_t(seg.x[i]), s, c, csn, l, g);
    total += l;
    if (seg.grad != nullptr) seg.grad[i] = scalar_t(g);
  }
  return double(total);
}

// sums[k] = sum over segs[k] of its loss terms (and the gradients written).
template <typename scalar_t, GanFamily F>
void run_segments(const Segment<scalar_t>* segs, int nseg, double* sums) {
  std::vector<int64_t> first(nseg + 1, 0);  // first chunk of each segment
  for (int k = 0; k < nseg; ++k) first[k + 1] = first[k] + (segs[k].n + kChunk - 1) / kChunk;
  std::vector<double> partials(first[nseg], 0.0);
  auto work = [&](int64_t c0, int64_t c1) {
    for (int64_t ci = c0; ci < c1; ++ci) {
      int k = 0;
      while (ci >= first[k + 1]) ++k;
      const int64_t begin = (ci - first[k]) * kChunk;
      partials[ci] = chunk_sum<scalar_t, F>(segs[k], begin, std::min(begin + kChunk, segs[k].n));
    }
  };
  int64_t total = 0;
  for (int k = 0; k < nseg; ++k) total += segs[k].n;
  if (total < kSerialBelow) {
    work(0, first[nseg]);
  } else {
    at::parallel_for(0, first[nseg], 1, work);
  }
  for (int k = 0; k < nseg; ++k) {
    double s = 0.0;
    for (int64_t ci = first[k]; ci < first[k + 1]; ++ci) s += partials[ci];
    sums[k] = s;
  }
}

template <typename scalar_t>
void run_family(GanFamily family, const Segment<scalar_t>* segs, int nseg, double* sums) {
  switch (family) {
    case GanFamily::kSoftplus: return run_segments<scalar_t, GanFamily::kSoftplus>(segs, nseg, sums);
    case GanFamily::kHinge: return run_segments<scalar_t, GanFamily::kHinge>(segs, nseg, sums);
    case GanFamily::kLinear: return run_segments<scalar_t, GanFamily::kLinear>(segs, nseg, sums);
  }
}

at::Tensor grad_buffer(const at::Tensor& x, bool wanted) {
  return wanted ? at::empty_like(x) : at::empty({0}, x.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_loss_cpu(
    const at::Tensor& real_in, const at::Tensor& fake_in, c10::string_view kind, bool real_grad,
    bool fake_grad) {
  check_floating(real_in, "discriminator_loss", "real_logits");
  check_like(real_in, "real_logits", fake_in, "discriminator_loss", "fake_logits", false);
  auto terms = gan_discriminator_terms(kind);
  auto real = real_in.contiguous(), fake = fake_in.contiguous();
  auto grad_real = grad_buffer(real, real_grad), grad_fake = grad_buffer(fake, fake_grad);
  auto loss = at::empty({}, real.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, real.scalar_type(), "discriminator_loss_cpu", [&] {
    Segment<scalar_t> segs[2] = {
        {real.const_data_ptr<scalar_t>(), real_grad ? grad_real.mutable_data_ptr<scalar_t>() : nullptr,
         real.numel(), terms.first},
        {fake.const_data_ptr<scalar_t>(), fake_grad ? grad_fake.mutable_data_ptr<scalar_t>() : nullptr,
         fake.numel(), terms.second}};
    double sums[2];
    run_family<scalar_t>(terms.first.family, segs, 2, sums);
    loss.mutable_data_ptr<scalar_t>()[0] =
        scalar_t(gan_mean(sums[0], real.numel()) + gan_mean(sums[1], fake.numel()));
  });
  return {loss, grad_real, grad_fake};
}

std::tuple<at::Tensor, at::Tensor> generator_loss_cpu(const at::Tensor& fake_in, c10::string_view kind,
                                                      bool fake_grad) {
  check_floating(fake_in, "generator_loss", "fake_logits");
  const GanTerm term = gan_generator_term(kind);
  auto fake = fake_in.contiguous();
  auto grad_fake = grad_buffer(fake, fake_grad);
  auto loss = at::empty({}, fake.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, fake.scalar_type(), "generator_loss_cpu", [&] {
    Segment<scalar_t> seg{fake.const_data_ptr<scalar_t>(),
                          fake_grad ? grad_fake.mutable_data_ptr<scalar_t>() : nullptr, fake.numel(), term};
    double sum;
    run_family<scalar_t>(term.family, &seg, 1, &sum);
    loss.mutable_data_ptr<scalar_t>()[0] = scalar_t(gan_mean(sum, fake.numel()));
  });
  return {loss, grad_fake};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("discriminator_loss", &fastgen::discriminator_loss_cpu);
  m.impl("generator_loss", &fastgen::generator_loss_cpu);
}
