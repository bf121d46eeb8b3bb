// Python entry point of compressor._C. Importing the module loads the shared library, which runs
// the TORCH_LIBRARY registrations; no pybind is needed for that, so this stays plain C API.
// Build facts for `compressor info` live in compressor/_build_info.py, written by setup.py.
#include <Python.h>

static struct PyModuleDef compressor_module = {PyModuleDef_HEAD_INIT, "_C",
                                               "compressor C++/CUDA kernels", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&compressor_module);
}
