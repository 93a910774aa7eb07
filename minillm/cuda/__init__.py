"""CUDA: our kernels behind the backend's matmul/attention seams (``kernels``), and the CPU emulator that
compiles and runs the same ``.cu`` sources with no GPU (``emulator``, a test and teaching tool).

The ``.cu`` sources live in the top-level ``kernels/`` folder and ship in the wheel as ``minillm/kernels/``.
"""
