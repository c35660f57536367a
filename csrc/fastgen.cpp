// The Python module fastgen._C. Importing it loads this shared library, whose static
// initialisers register the fastgen:: ops (schemas in csrc/<op>/<op>.cpp, kernels beside them).
// Its only function is an eager fast path for a dispatch-bound op; everything else goes through
// torch.ops.fastgen. The CPU kernels live in fastgen._cpu_<capability> (one per vector ISA),
// of which fastgen/_ext.py loads one.
#include <torch/extension.h>

namespace fastgen {
std::tuple<at::Tensor, at::Tensor> reparameterize_call(const at::Tensor& mu, const at::Tensor& logvar,
                                                       const at::Tensor& eps);  // reparameterize.cpp
}  // namespace fastgen

PYBIND11_MODULE(_C, m) {
#ifdef FASTGEN_WITH_CUDA
  m.attr("cuda_built") = 1;
#else
  m.attr("cuda_built") = 0;
#endif
  m.def("reparameterize", &fastgen::reparameterize_call, "torch.ops.fastgen.reparameterize, called natively",
        pybind11::arg("mu"), pybind11::arg("logvar"), pybind11::arg("eps"));
}
