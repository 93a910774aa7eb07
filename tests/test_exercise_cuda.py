"""Lesson 14's CUDA C exercise: the learner's inner loop is compiled with the CPU emulator and run; what
goes wrong on the way (a compile error, a crash, an endless loop, no g++) is the check's message, never an
exception."""

from __future__ import annotations

import numpy as np
import pytest

from minillm.cuda import emulator
from minillm.exercises import EXERCISES, check
from minillm.exercises import kernels as ex

NAME = "14.tiled_matmul_cuda"
needs_gxx = pytest.mark.skipif(not emulator.have_compiler(), reason="the CUDA emulator needs g++ on PATH")


def test_without_gxx_the_check_fails_and_says_so(monkeypatch):
    monkeypatch.setattr(emulator, "have_compiler", lambda: False)
    result = check(NAME, EXERCISES[NAME].reference)
    assert not result.passed and result.message.startswith("✗")
    assert "g++ was not found" in result.message, result.message
    assert result.function is EXERCISES[NAME].reference
    with pytest.raises(RuntimeError, match="g\\+\\+ was not found"):
        ones = np.ones((2, 2), np.float32)
        ex.tiled_matmul(ex.tiled_matmul_inner_loop(), ones, ones)


@needs_gxx
def test_a_compile_error_is_the_message_with_the_compilers_first_error_line():
    result = check(NAME, lambda: "for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx]")  # no ';'
    assert not result.passed
    assert "the kernel does not compile: line 1 of your snippet: expected" in result.message, result.message
    result = check(NAME, lambda: "for (int k = 0; k < TILE; ++k)\n    acc += As[ty][k] * Cs[k][tx];")
    assert "line 2 of your snippet:" in result.message and "Cs" in result.message, result.message


@needs_gxx
def test_the_reference_kernel_computes_a_at_b_on_a_ragged_shape():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((29, 17), dtype=np.float32), rng.standard_normal((17, 11), dtype=np.float32)
    c = ex.tiled_matmul(ex.tiled_matmul_inner_loop(), a, b)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="does not compile"):
        ex.tiled_matmul("acc +=;", a, b)


@needs_gxx
def test_a_kernel_that_crashes_or_never_ends_is_reported(monkeypatch):
    result = check(NAME, lambda: "acc += A[(long long)1 << 40];")
    assert not result.passed and "the kernel crashed (SIGSEGV)" in result.message, result.message
    monkeypatch.setattr(ex, "RUN_TIMEOUT_S", 4.0)
    result = check(NAME, lambda: "for (int k = 0; k < TILE; k += 0) acc += As[ty][k] * Bs[k][tx];")
    assert not result.passed and "did not finish within 4 s" in result.message, result.message


@needs_gxx
def test_an_equivalent_loop_passes_and_a_wrong_one_gets_no_false_hint():
    result = check(NAME, lambda: "#pragma unroll\nfor (int j = 0; j < TILE; j++) {\n"
                                 "  acc += Bs[j][tx] * As[ty][j];\n}")
    assert result.passed, result.message
    result = check(NAME, lambda: "for (int k = 0; k < TILE; ++k) acc += 2.f * As[ty][k] * Bs[k][tx];")
    assert not result.passed and "Hint:" not in result.message, result.message
