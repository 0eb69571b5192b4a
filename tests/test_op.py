# SPDX-License-Identifier: Apache-2.0
"""The OpenCL op against the NumPy reference, over a table of shapes and dtypes."""

from __future__ import annotations

import gc
import math

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
from conftest import assert_close, case_id, poisoned, skip_unsupported, transpose_inputs

import atrous_cl
from atrous_cl import geometry, reference

# (batch, height, width, in_channels, out_channels, kh, kw, rate)
SHAPES = [
    (1, 5, 5, 1, 1, 1, 1, 1),       # 1x1 kernel: a per-pixel matmul
    (2, 6, 7, 3, 4, 3, 3, 1),       # rate 1
    (1, 9, 8, 5, 3, 3, 3, 2),
    (3, 7, 11, 4, 6, 2, 2, 3),      # even kernel, odd rate: asymmetric pads
    (1, 8, 6, 2, 5, 4, 4, 1),       # even kernel, rate 1
    (2, 10, 9, 3, 3, 2, 5, 5),      # kh != kw, odd rate
    (1, 12, 7, 6, 2, 5, 3, 4),
    (1, 16, 16, 8, 8, 7, 7, 2),     # largest kernel
    (4, 4, 6, 2, 3, 3, 2, 6),       # batch 4
    (1, 1, 1, 3, 2, 3, 3, 2),       # 1x1 spatial
    (2, 1, 5, 2, 2, 3, 4, 3),       # 1 x W
    (1, 3, 4, 2, 3, 3, 3, 8),       # rate 8: dilated kernel far larger than the input
    (1, 5, 5, 4, 4, 6, 7, 7),       # dilated kernel larger than the input, rate 7
    (1, 6, 5, 64, 64, 3, 3, 2),     # 64 channels
    (2, 5, 9, 17, 33, 3, 3, 3),     # channel counts that are not tile multiples
    (1, 7, 19, 1, 9, 2, 3, 2),      # single input channel, width not a tile multiple
    (1, 4, 4, 10, 1, 5, 5, 1),      # single output channel
    (0, 5, 5, 3, 4, 3, 3, 2),       # empty batch
    # One channel in and out (the one-channel kernel on CPUs, vectors of 8 or 16 pixels):
    (2, 9, 37, 1, 1, 3, 3, 2),      # whole vectors, a ragged last one, batch 2
    (1, 6, 16, 1, 1, 5, 5, 3),      # one vector exactly
    (1, 33, 70, 1, 1, 2, 4, 1),     # even kernel, rate 1
    (1, 4, 40, 1, 1, 3, 3, 41),     # dilated kernel wider than the input
]
DTYPES = [np.float32, np.float64, np.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("shape", SHAPES, ids=case_id)
def test_matches_reference(queue, shape, padding, dtype):
    skip_unsupported(queue, dtype)
    value, filters, output_shape, rate = transpose_inputs(shape, padding, dtype, np.random.default_rng())
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)

    out = poisoned(queue, output_shape, dtype)
    got = atrous_cl.atrous_conv2d_transpose(cl_array.to_device(queue, value),
                                            cl_array.to_device(queue, filters),
                                            output_shape, rate, padding, out=out)
    assert got is out
    assert_close(got.get(), want, dtype, context=f"device path {shape} {padding}")

    host = atrous_cl.atrous_conv2d_transpose(value, filters, output_shape, rate, padding, queue=queue)
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, got.get())  # the same kernel: bit-identical


def test_device_arrays_chain_without_host(queue):
    """A device result feeds the next call and stays a device array on the same queue."""
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 8, 9, 4)).astype(np.float32)
    f1 = rng.standard_normal((3, 3, 6, 4)).astype(np.float32)
    f2 = rng.standard_normal((2, 2, 3, 6)).astype(np.float32)
    d_value = cl_array.to_device(queue, value)
    mid = atrous_cl.atrous_conv2d_transpose(d_value, cl_array.to_device(queue, f1),
                                            [2, 8, 9, 6], 2, "SAME")
    assert isinstance(mid, cl_array.Array) and mid.queue is queue
    end = atrous_cl.atrous_conv2d_transpose(mid, f2, [2, 11, 12, 3], 3, "VALID")  # host filters
    assert isinstance(end, cl_array.Array) and end.queue is queue
    want = reference.atrous_conv2d_transpose(
        reference.atrous_conv2d_transpose(value, f1, [2, 8, 9, 6], 2, "SAME"),
        f2, [2, 11, 12, 3], 3, "VALID")
    assert_close(end.get(), want)


@pytest.mark.parametrize("width, cin, cout", [(5, 3, 2), (37, 1, 1)],
                         ids=["register-tiles", "one-channel"])
def test_device_arrays_with_offsets(queue, width, cin, cout):
    """Views that start inside a buffer (here value[1:], filters[1:]) are read from their
    offset; one channel in and out (37 columns: whole pixel vectors and a ragged one) runs
    the one-channel kernel on CPUs, whose vector loads then start at unaligned offsets."""
    rng = np.random.default_rng()
    value = rng.standard_normal((3, 6, width, cin)).astype(np.float32)
    filters = rng.standard_normal((4, 3, cout, cin)).astype(np.float32)
    d_value, d_filters = cl_array.to_device(queue, value), cl_array.to_device(queue, filters)
    shape = [2, 6, width, cout]
    got = atrous_cl.atrous_conv2d_transpose(d_value[1:], d_filters[1:], shape, 2, "SAME")
    want = reference.atrous_conv2d_transpose(value[1:], filters[1:], shape, 2, "SAME")
    assert_close(got.get(), want)

    out_base = poisoned(queue, (3, 6, width, cout), np.float32)
    atrous_cl.atrous_conv2d_transpose(d_value[1:], d_filters[1:], shape, 2, "SAME",
                                      out=out_base[1:])
    assert np.isnan(out_base.get()[0]).all(), "wrote outside its output view"
    assert_close(out_base.get()[1:], want)


@pytest.mark.parametrize("layout", ["fortran", "negative-strides", "sliced", "read-only"])
def test_host_inputs_of_any_layout(queue, layout):
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 7, 6, 5)).astype(np.float32)
    filters = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    if layout == "fortran":
        value, filters = np.asfortranarray(value), np.asfortranarray(filters)
    elif layout == "negative-strides":
        value, filters = value[:, ::-1, ::-1], filters[::-1, :, ::-1]
    elif layout == "sliced":
        value = np.repeat(value, 2, axis=3)[..., ::2]
    else:
        value.flags.writeable = filters.flags.writeable = False
    got = atrous_cl.atrous_conv2d_transpose(value, filters, [2, 7, 6, 4], 3, "SAME", queue=queue)
    assert_close(got, reference.atrous_conv2d_transpose(value, filters, [2, 7, 6, 4], 3, "SAME"))


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_empty_batch_gives_empty_result(queue, padding):
    value = np.zeros((0, 4, 5, 3), np.float32)
    filters = np.ones((3, 3, 2, 3), np.float32)
    out_hw = geometry.transpose_output_hw((4, 5), (3, 3), 2, padding)
    host = atrous_cl.atrous_conv2d_transpose(value, filters, [0, *out_hw, 2], 2, padding, queue=queue)
    assert host.shape == (0, *out_hw, 2) and host.dtype == np.float32
    dev = atrous_cl.atrous_conv2d_transpose(cl_array.to_device(queue, value), filters,
                                            [0, *out_hw, 2], 2, padding)
    assert isinstance(dev, cl_array.Array) and dev.shape == (0, *out_hw, 2)


@pytest.mark.parametrize("shape", [(1, 4, 5, 0), (2, 0, 0, 3)], ids=["no-in-channels", "empty-spatial"])
def test_empty_sum_gives_zeros(queue, shape):
    """No input channels, or VALID on an empty image: every output is an empty sum."""
    value = np.zeros(shape, np.float32)
    filters = np.ones((2, 3, 4, shape[3]), np.float32)
    output_shape = (shape[0], *geometry.transpose_output_hw(shape[1:3], (2, 3), 2, "VALID"), 4)
    out = poisoned(queue, output_shape, np.float32)
    atrous_cl.atrous_conv2d_transpose(cl_array.to_device(queue, value), filters, output_shape,
                                      2, "VALID", out=out)
    np.testing.assert_array_equal(out.get(), np.zeros(output_shape, np.float32))


def test_results_identical_run_to_run(queue):
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 12, 13, 16)).astype(np.float32)
    filters = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
    first = atrous_cl.atrous_conv2d_transpose(value, filters, [2, 12, 13, 8], 2, "SAME", queue=queue)
    for _ in range(3):
        again = atrous_cl.atrous_conv2d_transpose(value, filters, [2, 12, 13, 8], 2, "SAME", queue=queue)
        np.testing.assert_array_equal(again, first)


def test_nan_and_inf_go_only_where_the_math_sends_them(queue):
    """A NaN input pixel reaches only the outputs its taps touch; an Inf weight only its tap's."""
    value = np.ones((1, 9, 9, 2), np.float32)
    value[0, 4, 4, 0] = np.nan
    filters = np.ones((3, 3, 2, 2), np.float32)
    filters[0, 0, 1, 1] = np.inf  # reaches output channel 1 only, from in-channel 1
    want = reference.atrous_conv2d_transpose(value, filters, [1, 9, 9, 2], 2, "SAME")
    got = atrous_cl.atrous_conv2d_transpose(value, filters, [1, 9, 9, 2], 2, "SAME", queue=queue)
    assert np.isnan(want).sum() == 18 and np.isinf(want).any()  # 9 taps x 2 channels
    assert_close(got, want)


def test_float16_is_summed_in_float32(queue):
    """2048 + 1 + 1 = 2050 is a float16; a float16 running sum would end at 2048."""
    value = np.array([2048, 1, 1, 0], np.float16).reshape(1, 1, 1, 4)
    filters = np.ones((1, 1, 1, 4), np.float16)
    got = atrous_cl.atrous_conv2d_transpose(value, filters, [1, 1, 1, 1], 1, "SAME", queue=queue)
    assert got.dtype == np.float16 and got[0, 0, 0, 0] == 2050


def test_host_filters_next_to_device_value_are_copied(queue):
    """A call that returns before its kernels finish must not read the caller's host array later."""
    rng = np.random.default_rng()
    # Large enough that the kernels are still queued when the caller writes.
    value = rng.standard_normal((4, 48, 48, 32)).astype(np.float32)
    filters = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    want = reference.atrous_conv2d_transpose(value, filters, (4, 48, 48, 32), 2, "SAME")
    d_value = cl_array.to_device(queue, value)
    queue.finish()
    got = atrous_cl.atrous_conv2d_transpose(d_value, filters, (4, 48, 48, 32), 2, "SAME")
    filters[...] = np.nan  # before the result is fetched: the op must have its own copy
    assert_close(got.get(), want)


@pytest.mark.parametrize("filename", ["atrous_conv2d_transpose.cl", "atrous_conv2d.cl"])
def test_every_kernel_declares_its_argument_types(queue, filename):
    """Launches set scalar arguments by declared dtype (fast); each kernel needs one per argument."""
    from atrous_cl import launch, programs

    source = programs.program_source(filename)
    declared = programs.scalar_arg_dtypes(source)
    options = ("-DT=float", "-DACC=float", "-DBW=2", "-DBC=2", "-DGC=2", "-DCIN=3", "-DCOUT=3",
               "-DCOUTP=4", "-DKH=2", "-DKW=2", *launch.dilation_options(1, 0, 1, 0),
               "-DVW=2", "-DCONSECUTIVE")  # the one-channel and consecutive kernels too
    kernels, _ = programs.get_kernels(queue.context, filename, options)
    assert set(declared) == set(kernels)
    for name, kernel in kernels.items():
        assert len(declared[name]) == kernel.num_args, name


def test_unknown_scalar_argument_type_is_named():
    from atrous_cl import programs

    with pytest.raises(ValueError, match="k: no NumPy type known for argument 'const float x'"):
        programs.scalar_arg_dtypes("__kernel void k(__global float *out, const float x) {}")


def _settled_svm_pool(queue, monkeypatch):
    """``queue``'s SVM pool (memory.svm_pool) with no block in use that a call could give back:
    earlier tests' host calls on the queue keep the next call's result in a pooled block
    (calls.transpose_host), which a call that starts their memo afresh gives back while it
    runs (an order of tests under pytest-xdist did); dropped now, as are results left as
    garbage."""
    from atrous_cl import memory

    monkeypatch.setattr(queue, "_atrous_cl_host", {}, raising=False)
    gc.collect()
    return memory.svm_pool(queue)


@pytest.mark.parametrize("mode", ["system-svm", "fine-grain-results", "host-pointer-buffers"])
def test_host_path_works_in_place_on_cpu_devices(queue, mode, monkeypatch):
    """On a CPU device the host API copies nothing to or from the device: with system
    SVM kernels take the arrays' pointers, elsewhere buffers made on the inputs and a
    result in fine-grained buffer SVM, or (without that) a buffer made on it. OpenCL
    defines a host-pointer buffer's memory only once it is mapped, so such a result
    must be mapped before it is returned (every CPU runtime here writes the memory
    directly, so only the recorded map shows it); an SVM result needs no map."""
    from atrous_cl import memory
    from atrous_cl.facts import facts

    if not memory.works_in_host_memory(queue.device):
        pytest.skip(f"{queue.device.name}: not a CPU device; the host path copies")
    svm = mode == "system-svm"
    if svm and not memory.uses_system_svm(queue.device):
        pytest.skip(f"{queue.device.name}: no fine-grained system SVM")
    if mode == "fine-grain-results" and not facts(queue.device).fine_grain_buffers:
        pytest.skip(f"{queue.device.name}: no fine-grained buffer SVM")
    monkeypatch.setattr(memory, "uses_system_svm", lambda device: svm)
    if mode == "host-pointer-buffers":
        monkeypatch.setattr(memory, "result_allocator", lambda queue, nbytes: None)

    def no_copies(*args, **kwargs):
        raise AssertionError("the host path copied an array to the device")

    monkeypatch.setattr(cl_array, "to_device", no_copies)
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)[:, :, ::-1]  # not contiguous
    filters = rng.standard_normal((3, 2, 4, 3)).astype(np.float32)
    filters.flags.writeable = False  # copied on the host for SVM, not to the device
    mapped = []
    real_map = cl.enqueue_map_buffer
    monkeypatch.setattr(cl, "enqueue_map_buffer",
                        lambda queue, buf, *a, **k: mapped.append(buf.size) or real_map(queue, buf, *a, **k))
    want = reference.atrous_conv2d_transpose(value, filters, (2, 6, 7, 4), 2, "SAME")
    pool = _settled_svm_pool(queue, monkeypatch)
    active = pool.active_blocks
    got = atrous_cl.atrous_conv2d_transpose(value, filters, (2, 6, 7, 4), 2, "SAME", queue=queue)
    assert_close(got, want, np.float32)
    assert mapped == ([got.nbytes] if mode == "host-pointer-buffers" else [])
    assert pool.active_blocks - active == (mode == "fine-grain-results")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("limit", [-1, 0, 1],
                         ids=["result-above-limit", "result-at-limit", "result-below-limit"])
def test_small_host_results_in_fine_grained_svm(queue, limit, dtype, monkeypatch):
    """Without system SVM, a host-path result up to SVM_RESULT_BYTES is allocated in
    fine-grained buffer SVM and returned without a map; a larger one lies in a
    host-pointer buffer, mapped before it is returned. Both are right, poisoned first."""
    from atrous_cl import memory
    from atrous_cl.facts import facts

    if not memory.works_in_host_memory(queue.device) or not facts(queue.device).fine_grain_buffers:
        pytest.skip(f"{queue.device.name}: no host path in place with fine-grained buffer SVM")
    skip_unsupported(queue, dtype)
    monkeypatch.setattr(memory, "uses_system_svm", lambda device: False)
    output_shape = (2, 6, 7, 4)
    nbytes = math.prod(output_shape) * np.dtype(dtype).itemsize
    monkeypatch.setattr(memory, "SVM_RESULT_BYTES", nbytes + limit)
    mapped = []
    real_map = cl.enqueue_map_buffer
    monkeypatch.setattr(cl, "enqueue_map_buffer",
                        lambda queue, buf, *a, **k: mapped.append(buf.size) or real_map(queue, buf, *a, **k))
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 6, 7, 3)).astype(dtype)
    filters = rng.standard_normal((3, 2, 4, 3)).astype(dtype)
    pool = _settled_svm_pool(queue, monkeypatch)
    active = pool.active_blocks
    got = atrous_cl.atrous_conv2d_transpose(value, filters, output_shape, 2, "SAME", queue=queue)
    assert_close(got, reference.atrous_conv2d_transpose(value, filters, output_shape, 2, "SAME"),
                 dtype)
    in_svm = limit >= 0
    assert pool.active_blocks - active == in_svm
    assert mapped == ([] if in_svm else [nbytes])
    assert got.flags.writeable and got.flags.c_contiguous and got.dtype == dtype
    del got
    gc.collect()
    assert pool.active_blocks == active  # the block went back with the array



@pytest.mark.parametrize("wide", [False, True], ids=["as-stored", "widened"])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3], SHAPES[14], SHAPES[15]], ids=case_id)
def test_float16_as_stored_and_widened(queue, shape, wide, monkeypatch):
    """float16 is widened to float32 before the main kernel on CPUs and loaded as stored
    elsewhere; both paths run on every device here, from views that start inside a buffer."""
    from atrous_cl import launch

    monkeypatch.setattr(launch, "widens_inputs", lambda device, dtype: wide)
    value, filters, output_shape, rate = transpose_inputs(shape, "SAME", np.float16, np.random.default_rng())
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, "SAME")
    d_value = cl_array.to_device(queue, np.concatenate([value[:1], value]))[1:]
    d_filters = cl_array.to_device(queue, np.concatenate([filters[:1], filters]))[1:]
    out = poisoned(queue, output_shape, np.float16)
    atrous_cl.atrous_conv2d_transpose(d_value, d_filters, output_shape, rate, "SAME", out=out)
    assert_close(out.get(), want, np.float16, context=f"{'widened' if wide else 'as stored'}")
    forward = atrous_cl.atrous_conv2d(value, filters.transpose(0, 1, 3, 2).copy(), rate, "SAME",
                                      queue=queue)
    assert_close(forward, reference.atrous_conv2d(value, filters.transpose(0, 1, 3, 2), rate, "SAME"),
                 np.float16, context="forward op")


def test_a_queue_whose_context_the_caller_dropped(queue):
    """Intel's CPU runtime frees a context with its last pyopencl.Context, even while a
    queue uses it: the op says so (DeviceError) rather than pyopencl's bare LogicError.
    Other runtimes keep the context and the call runs."""
    q = cl.CommandQueue(cl.Context([queue.device]))
    gc.collect()
    padding = "SAME"
    value, filters, output_shape, rate = transpose_inputs((1, 6, 7, 3, 4, 3, 3, 2), padding,
                                                          np.float32, np.random.default_rng())
    try:
        got = atrous_cl.atrous_conv2d_transpose(value, filters, output_shape, rate, padding, queue=q)
    except atrous_cl.DeviceError as e:
        assert "keep a reference to the Context" in str(e)
        assert "Intel" in queue.device.platform.name, "only Intel's runtime frees it"
        return
    assert_close(got, reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding))
