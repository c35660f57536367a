// The Python module stub of fastgen._C. Importing it loads this shared library, whose static
// initialisers register the fastgen:: ops (schemas in csrc/<op>/<op>.cpp, kernels beside them).
#include <Python.h>

static struct PyModuleDef fastgen_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&fastgen_module);
  if (m == nullptr) return nullptr;
#ifdef FASTGEN_WITH_CUDA
  PyModule_AddIntConstant(m, "cuda_built", 1);
#else
  PyModule_AddIntConstant(m, "cuda_built", 0);
#endif
#if defined(CPU_CAPABILITY_AVX512)
  PyModule_AddStringConstant(m, "cpu_capability", "avx512");
#elif defined(CPU_CAPABILITY_AVX2)
  PyModule_AddStringConstant(m, "cpu_capability", "avx2");
#else
  PyModule_AddStringConstant(m, "cpu_capability", "default");
#endif
  return m;
}
