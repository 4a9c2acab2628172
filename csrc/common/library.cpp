// The pyfusedbn library itself: the Python module that `import pyfusedbn._C` loads (so running
// every registration in this library) and the namespace's one TORCH_LIBRARY block. Each norm
// declares its op schemas in its own TORCH_LIBRARY_FRAGMENT (batch_norm/schema.cpp,
// group_norm/schema.cpp); each device registers kernels in TORCH_LIBRARY_IMPL blocks (cpu/,
// cuda/); Python registers fake kernels, the C++ autograd is in each norm's autograd.cpp.
#include <Python.h>
#include <torch/library.h>

#include "kernel_calls.h"

// The module itself is empty.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(pyfusedbn, m) {
  // How many kernel launches a device's compiled code has made: lets tests prove that the
  // compiled kernels, not some Python reference, produced the numbers.
  m.def("kernel_calls(str device) -> int", &pyfusedbn::kernel_calls);
}
