// Python entry point of compressor._C. Importing the module loads the shared library, which runs
// the TORCH_LIBRARY registrations; no pybind is needed for that, so this stays plain C API. Its
// one function, release_kept_outputs(), frees the kernels' idle output memory (kept_outputs.h):
// not an op, as it takes and gives no tensor.
// Build facts for `compressor info` live in compressor/_build_info.py, written by setup.py.
#include <Python.h>

#include "compressor/kept_outputs.h"

static PyObject* release_kept_outputs(PyObject*, PyObject*) {
  return PyLong_FromSize_t(compressor::release_kept_outputs());
}

static PyMethodDef compressor_methods[] = {
    {"release_kept_outputs", release_kept_outputs, METH_NOARGS,
     "Return the CPU kernels' idle output memory to the system; the bytes released."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef compressor_module = {PyModuleDef_HEAD_INIT, "_C",
                                               "compressor C++/CUDA kernels", -1,
                                               compressor_methods};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&compressor_module);
}
