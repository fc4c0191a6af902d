"""Whether Triton can be imported. CPU-only installs may lack it: the ``*_triton`` ops are then
not registered and every caller uses the C++ op of the same computation."""

try:
    import triton  # noqa: F401

    triton_available = True
except ImportError:
    triton_available = False
