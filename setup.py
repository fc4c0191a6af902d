"""Builds panther's native op library (csrc/) with torch's extension machinery.

The library is a plain shared object (no Python module init): panther loads it with
``torch.ops.load_library`` so that an AOTInductor package can load the same file
without Python. CUDA sources (csrc/**/*.cu) are compiled only where a CUDA toolchain
and a CUDA build of torch are present; the C++ kernels register for CPU always and
for CUDA when ``PANTHER_WITH_CUDA`` is defined.
"""

import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as err:  # pragma: no cover - build-time guard
    raise SystemExit(
        "panther's native ops build against an installed torch: install torch first, then "
        "`pip install --no-build-isolation -e .` (or run `make build`)."
    ) from err


def want_cuda() -> bool:
    flag = os.environ.get("PANTHER_BUILD_CUDA")
    if flag is not None:
        return flag == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


here = os.path.dirname(os.path.abspath(__file__))
cpp_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
cu_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
cxx_flags = ["-O3", "-std=c++17"]

if want_cuda():
    ext = CUDAExtension(
        "panther._C",
        cpp_sources + cu_sources,
        include_dirs=[os.path.join(here, "csrc")],
        define_macros=[("PANTHER_WITH_CUDA", None), ("Py_LIMITED_API", "0x03090000")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]},
        py_limited_api=True,
    )
else:
    ext = CppExtension(
        "panther._C",
        cpp_sources,
        include_dirs=[os.path.join(here, "csrc")],
        define_macros=[("Py_LIMITED_API", "0x03090000")],
        extra_compile_args={"cxx": cxx_flags},
        py_limited_api=True,
    )

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
