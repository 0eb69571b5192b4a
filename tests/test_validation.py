# SPDX-License-Identifier: Apache-2.0
"""Every bad input gets a clear error before any device work, from the op and the reference."""

from __future__ import annotations


import numpy as np
import pyopencl as cl
import pytest

import atrous_cl
from atrous_cl import calls, facts, launch, programs, reference
from atrous_cl.errors import DeviceCapabilityError, DeviceError
from conftest import stub_device

V = np.zeros((2, 5, 6, 3), np.float32)      # NHWC
F = np.zeros((3, 2, 4, 3), np.float32)      # kh=3, kw=2, out 4, in 3
GOOD = dict(value=V, filters=F, output_shape=[2, 5, 6, 4], rate=2, padding="SAME")

# (id, overrides, exception, regex the message must match)
CASES = [
    ("value-3d", dict(value=V[0]), ValueError, r"value must be 4-D.*got 3-D"),
    ("filters-2d", dict(filters=F[0, 0]), ValueError, r"filters must be 4-D.*got 2-D"),
    ("channel-mismatch", dict(value=np.zeros((2, 5, 6, 7), np.float32)), ValueError,
     r"value's channels \(value.shape\[3\] = 7\) must equal filters' in_channels \(filters.shape\[3\] = 3\)"),
    ("rate-0", dict(rate=0), ValueError, r"rate must be a positive integer.*got 0"),
    ("rate-negative", dict(rate=-2), ValueError, r"rate must be a positive integer.*got -2"),
    ("rate-float", dict(rate=2.0), TypeError, r"rate must be an integer, got 2.0 of type float"),
    ("rate-bool", dict(rate=True), TypeError, r"rate must be an integer, got True"),
    ("padding-lower", dict(padding="same"), ValueError, r"padding must be 'SAME' or 'VALID', got 'same' .*upper case"),
    ("padding-other", dict(padding="FULL"), ValueError, r"padding must be 'SAME' or 'VALID', got 'FULL'"),
    ("padding-type", dict(padding=None), TypeError, r"padding must be the string .* got None"),
    ("output-shape-3", dict(output_shape=[2, 5, 6]), ValueError, r"output_shape must have 4 entries.*got 3"),
    ("output-shape-negative", dict(output_shape=[2, -5, 6, 4]), ValueError,
     r"output_shape must be non-negative.*\[2, -5, 6, 4\]"),
    ("output-shape-float", dict(output_shape=[2, 5.0, 6, 4]), TypeError, r"output_shape\[1\] must be an integer"),
    ("output-shape-2d-array", dict(output_shape=np.array([[2, 5], [6, 4]])), ValueError,
     r"output_shape must be a 1-D sequence.*shape \(2, 2\)"),
    ("output-shape-scalar", dict(output_shape=7), TypeError, r"output_shape must be a list, tuple or 1-D array"),
    ("out-channels-mismatch", dict(output_shape=[2, 5, 6, 5]), ValueError,
     r"output_shape\[3\] \(channels\) must equal filters' out_channels \(filters.shape\[2\] = 4\), got 5"),
    ("batch-mismatch", dict(output_shape=[3, 5, 6, 4]), ValueError,
     r"output_shape\[0\] \(batch\) must equal value's batch \(2\), got 3"),
    ("same-spatial", dict(output_shape=[2, 9, 8, 4]), ValueError,
     r"output_shape\[1:3\].*SAME.*expected \[5, 6\], got \[9, 8\]"),
    ("valid-spatial", dict(padding="VALID"), ValueError,
     r"output_shape\[1:3\].*VALID.*expected \[9, 8\], got \[5, 6\]"),
    ("rate-1-spatial", dict(rate=1, output_shape=[2, 4, 6, 4]), ValueError,  # TF skips this check
     r"expected \[5, 6\], got \[4, 6\]"),
    ("empty-kernel", dict(filters=np.zeros((0, 2, 4, 3), np.float32)), ValueError,
     r"filters must have a spatial size of at least 1x1, got 0x2"),
    ("int-dtype", dict(value=V.astype(np.int32)), TypeError, r"value must have dtype .*got int32"),
    ("big-endian-value", dict(value=V.astype(">f4")), TypeError,
     r"value has dtype float32 in non-native byte order \(>f4\); convert it first"),
    ("big-endian-filters", dict(filters=F.astype(">f4")), TypeError,
     r"filters has dtype float32 in non-native byte order"),
    ("mixed-dtypes", dict(filters=F.astype(np.float64)), TypeError,
     r"same dtype, got value float32 and filters float64"),
]


@pytest.mark.parametrize("fn", [atrous_cl.atrous_conv2d_transpose, reference.atrous_conv2d_transpose],
                         ids=["opencl", "reference"])
@pytest.mark.parametrize("overrides, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument(fn, overrides, exc, pattern, monkeypatch):
    def no_device_work(*args, **kwargs):
        raise AssertionError("device work started before the arguments were checked")

    monkeypatch.setattr(calls.discovery, "get_queue", no_device_work)
    monkeypatch.setattr(programs, "get_kernels", no_device_work)
    with pytest.raises(exc, match=pattern):
        fn(**{**GOOD, **overrides})


@pytest.mark.parametrize("good, bad, pattern", [
    (dict(rate=2), dict(rate=2.0), r"rate must be an integer, got 2.0"),
    (dict(rate=1), dict(rate=True), r"rate must be an integer, got True"),
    (dict(), dict(output_shape=[2, 5.0, 6, 4]), r"output_shape\[1\] must be an integer"),
    (dict(), dict(output_shape=(2, 5, 6, np.float64(4))), r"output_shape\[3\] must be an integer"),
], ids=["2.0-after-2", "True-after-1", "float-dim", "numpy-float-dim"])
def test_a_bad_argument_equal_to_a_checked_good_one_is_refused(queue, good, bad, pattern):
    """The op remembers the checks of plain-int arguments; 2.0 == 2 and True == 1
    (with equal hashes) must not pass on the strength of an earlier good call."""
    atrous_cl.atrous_conv2d_transpose(**{**GOOD, **good}, queue=queue)
    with pytest.raises(TypeError, match=pattern):
        atrous_cl.atrous_conv2d_transpose(**{**GOOD, **bad}, queue=queue)


def test_good_arguments_pass_validation():
    """The baseline the table varies is itself valid (so each case fails for its own reason)."""
    assert reference.atrous_conv2d_transpose(**GOOD).shape == (2, 5, 6, 4)


def test_float64_on_device_without_fp64():
    stub = stub_device(extensions="cl_khr_fp16", name="NoFP64 GPU", driver_version="1.0")
    with pytest.raises(DeviceCapabilityError, match=r"float64 needs the OpenCL extension cl_khr_fp64, "
                                                    r"which device NoFP64 GPU \(Stub, driver 1.0\) lacks"):
        facts.check_dtype_support(stub, np.float64)
    facts.check_dtype_support(stub, np.float16)  # half is storage-only: no extension needed


def test_allocation_larger_than_device_limit():
    stub = stub_device(max_mem_alloc_size=1024, name="Tiny")
    with pytest.raises(DeviceCapabilityError, match=r"the output needs 4096 bytes, more than the largest "
                                                    r"buffer .* \(1024 bytes\)"):
        facts.check_allocation(stub, "the output", 4096)


def test_output_larger_than_device_allows_raises_before_launch(queue):
    """A request past max_mem_alloc_size is refused by name, not by a driver crash."""
    limit = queue.device.max_mem_alloc_size
    h = int(np.sqrt(limit // 4)) + 2  # one channel of float32: > limit bytes
    with pytest.raises(DeviceCapabilityError, match="the output needs"):
        atrous_cl.atrous_conv2d_transpose(np.zeros((1, h, h, 0), np.float32),
                                          np.zeros((1, 1, 1, 0), np.float32), [1, h, h, 1], 1,
                                          "SAME", queue=queue)


def test_a_problem_that_fitted_is_checked_again_on_a_device_that_reports_less(queue, monkeypatch):
    """Passed device checks are remembered per queue (atrous_cl.calls.prepared): a new
    queue checks them against what its device reports."""
    atrous_cl.atrous_conv2d_transpose(**GOOD, queue=queue)
    found = facts.facts(queue.device)
    monkeypatch.setitem(facts._facts, queue.device.int_ptr, found._replace(global_mem=64))
    with pytest.raises(DeviceCapabilityError, match=r"value, filters and output need \d+ bytes "
                                                    r"together, more than the 64 bytes of global memory"):
        atrous_cl.atrous_conv2d_transpose(**GOOD, queue=cl.CommandQueue(queue.context, queue.device))


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(device="0:99"), ValueError, r"platform 0 has \d+ device\(s\), got index 99"),
    (dict(device="gpu"), ValueError, r"device selector must look like 'P' or 'P:D'"),
    (dict(device=3), TypeError, r"device must be a pyopencl.Device"),
    (dict(queue="q"), TypeError, r"queue must be a pyopencl.CommandQueue"),
    (dict(context=object()), TypeError, r"context must be a pyopencl.Context"),
], ids=["device-index", "device-selector", "device-type", "queue-type", "context-type"])
def test_bad_device_arguments(queue, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        atrous_cl.atrous_conv2d_transpose(**GOOD, **kwargs)


def test_queue_and_device_together(queue):
    with pytest.raises(ValueError, match="pass at most one of queue, context and device, got queue, device"):
        atrous_cl.atrous_conv2d_transpose(**GOOD, queue=queue, device=queue.device)


def test_out_must_match(queue):
    import pyopencl.array as cl_array

    d_value = cl_array.to_device(queue, V)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 5, 6, 4\) and dtype float32, got shape \(2, 5, 6, 3\)"):
        atrous_cl.atrous_conv2d_transpose(d_value, F, [2, 5, 6, 4], 2, "SAME",
                                          out=cl_array.empty(queue, (2, 5, 6, 3), np.float32))
    with pytest.raises(TypeError, match="out is for device arrays"):
        atrous_cl.atrous_conv2d_transpose(**GOOD, queue=queue, out=cl_array.empty(queue, (2, 5, 6, 4), np.float32))


def test_build_failure_is_a_device_error(queue):
    with pytest.raises(DeviceError, match=r"(?s)building atrous_conv2d_transpose.cl failed.*"
                                          r"status CL_BUILD_PROGRAM_FAILURE.*options -DT=no_such_type") as info:
        programs.get_kernels(queue.context, "atrous_conv2d_transpose.cl",
                            ("-DT=no_such_type", "-DACC=float", "-DBW=1", "-DBC=1"))
    assert info.value.status == "CL_BUILD_PROGRAM_FAILURE"
    assert info.value.options == ("-DT=no_such_type", "-DACC=float", "-DBW=1", "-DBC=1")


def test_tensors_beyond_global_memory_raise_before_allocating():
    from atrous_cl.validation import check_transpose_args

    stub = stub_device(max_mem_alloc_size=10**9, global_mem_size=10**6, name="Small")
    args = check_transpose_args((1, 300, 300, 2), (3, 3, 2, 2), (1, 300, 300, 2), 2, "SAME")
    with pytest.raises(DeviceCapabilityError, match=r"value, filters and output need \d+ bytes together, "
                                                    r"more than the 1000000 bytes of global memory"):
        calls.check_device(stub, np.float32, {"value": args.value_shape, "filters": args.filters_shape,
                                              "the output": args.output_shape},
                           launch.temporaries(stub, np.float32, args),
                           together="value, filters and output")


def test_dimensions_past_int32_are_refused():
    from atrous_cl.validation import check_transpose_args

    big = 2**31
    args = check_transpose_args((1, 1, big, 1), (1, 1, 1, 1), (1, 1, big, 1), 1, "SAME")
    with pytest.raises(ValueError, match=r"value dimensions must be below 2\*\*31"):
        launch.check_limits(args)


@pytest.mark.parametrize("x, want", [(3, 3), (np.int64(-2), -2), (np.uint8(7), 7), (2**40, 2**40)])
def test_check_int_takes_integers_as_python_ints(x, want):
    from atrous_cl.validation import check_int

    got = check_int(x, "opset")
    assert type(got) is int and got == want


@pytest.mark.parametrize("x", [2.0, True, np.bool_(False), "3", None, np.float32(1)])
def test_check_int_refuses_other_types_and_names_the_argument(x):
    from atrous_cl.validation import check_int

    with pytest.raises(TypeError, match=rf"opset must be an integer, got .* of type {type(x).__name__}"):
        check_int(x, "opset")


def test_filter_gradient_counts_its_widened_inputs_on_cpus():
    """float16 on a CPU widens both inputs to float32 buffers of their own (twice the
    elements each), which the memory check must count; nothing widens elsewhere."""
    import pyopencl as cl

    from atrous_cl.validation import check_conv_args

    args = check_conv_args((2, 9, 8, 3), (3, 3, 3, 5), 2, "SAME")
    cpu, gpu = (stub_device(type=kind, name=str(kind)) for kind in (cl.device_type.CPU,
                                                                   cl.device_type.GPU))
    step = calls.FilterGrad(args, "dy", "value", "d_filters")
    got = step.temporaries(cpu, np.dtype(np.float16))
    assert got["the filter gradient's widened dy"] == 2 * 2 * 9 * 8 * 3
    assert got["the filter gradient's widened value"] == 2 * 2 * 9 * 8 * 5
    for device, dtype in [(cpu, np.float32), (gpu, np.float16)]:
        assert list(step.temporaries(device, np.dtype(dtype))) == ["the filter gradient's partial sums"]


@pytest.mark.parametrize("packed", ["x", "d"])
def test_filter_gradient_counts_its_packed_inputs(monkeypatch, packed):
    """x packed by groups of input channels (xpack), or d by each work-item's output
    channels (dpack), takes a buffer of its own, which the memory check must count: x's
    channels padded to a whole group and its rows to every column a tap reads, d's
    channels to a whole group of ov vectors; float32 for float16 on CPUs, where it replaces
    that input's widened copy."""
    import pyopencl as cl

    from atrous_cl import filter_grad
    from atrous_cl.tiles import Tile
    from atrous_cl.validation import check_conv_args

    xpack = packed == "x"
    args = check_conv_args((2, 9, 8, 5), (3, 3, 5, 4 if xpack else 6), 2, "SAME")
    monkeypatch.setattr(filter_grad, "tiles", lambda *a: (Tile(8, 4), 2, 1, 512 << 10,
                                                          1 if xpack else 2, 3, xpack, 2))
    monkeypatch.setattr(filter_grad, "packs_d", lambda *a: not xpack)
    monkeypatch.setattr(filter_grad, "PACK_FROM_MACS", 0)
    cpu = stub_device(type=cl.device_type.CPU, name="cpu")
    step = calls.FilterGrad(args, "dy", "value", "d_filters")
    # x (dy): rows of 8 + 2 * 2 columns (every column a tap of rate 2 reads), 6 channels;
    # d (value): 6 channels in groups of two vectors of 4, one group of 8 a pixel.
    name, other, want, other_want = (("dy", "value", 2 * 9 * 12 * 6, 2 * 9 * 8 * 4) if xpack
                                     else ("value", "dy", 2 * 9 * 8 * 8, 2 * 9 * 8 * 5))
    got = step.temporaries(cpu, np.dtype(np.float32))
    assert got[f"the filter gradient's packed {name}"] == want
    assert f"the filter gradient's packed {other}" not in got
    got = step.temporaries(cpu, np.dtype(np.float16))
    assert got[f"the filter gradient's packed {name}"] == 2 * want
    assert f"the filter gradient's widened {name}" not in got
    assert got[f"the filter gradient's widened {other}"] == 2 * other_want
