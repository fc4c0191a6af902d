// The native library is loaded with torch.ops.load_library, not imported; this empty
// module init only lets setuptools build it as a py_limited_api extension.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
