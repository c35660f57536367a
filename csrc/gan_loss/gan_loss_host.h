// Host-side pieces of the fused GAN losses, shared by the CPU and CUDA launchers
// (gan_loss_cpu.cpp, gan_loss_cuda.cu): the terms of each kind and the mean of a term. The kinds
// are those of fastgen/reference/gan_loss.py (tests/ops/test_gan_loss.py checks that this table
// accepts exactly them and computes each as the reference); the per-element math is gan_loss.h.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <limits>
#include <utility>

#include "gan_loss/gan_loss.h"

namespace fastgen {

// One loss term: its family, the inner sign s and the outer sign c.
struct GanTerm {
  GanFamily family;
  double s;
  double c;
};

// The (real, fake) terms of a discriminator kind; both share one family.
inline std::pair<GanTerm, GanTerm> gan_discriminator_terms(c10::string_view kind) {
  if (kind == "bce") return {{GanFamily::kSoftplus, -1.0, 1.0}, {GanFamily::kSoftplus, 1.0, 1.0}};
  if (kind == "hinge") return {{GanFamily::kHinge, -1.0, 1.0}, {GanFamily::kHinge, 1.0, 1.0}};
  TORCH_CHECK_VALUE(false, "fastgen::discriminator_loss: kind must be 'bce' or 'hinge'; got '", kind, "'");
}

// The fake term of a generator kind.
inline GanTerm gan_generator_term(c10::string_view kind) {
  if (kind == "minimax") return {GanFamily::kSoftplus, 1.0, -1.0};
  if (kind == "nonsaturating") return {GanFamily::kSoftplus, -1.0, 1.0};
  if (kind == "hinge") return {GanFamily::kLinear, -1.0, 1.0};
  TORCH_CHECK_VALUE(false, "fastgen::generator_loss: kind must be 'minimax', 'nonsaturating' or 'hinge'; got '",
                    kind, "'");
}

// The mean of a term from its sum: NaN for an empty tensor, as torch.mean.
inline double gan_mean(double sum, int64_t n) {
  return n > 0 ? sum / double(n) : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace fastgen
