# SPDX-License-Identifier: Apache-2.0
"""The local-memory (GPU) kernel, launched directly, against the NumPy reference.

CPU devices and Oclgrind run work-groups, local memory and barriers too, so
this path is verified on every test device, GPU or not.
"""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
from conftest import assert_close, case_id, poisoned, skip_unsupported, transpose_inputs

from atrous_cl import geometry, launch, local_tile, programs, reference
from atrous_cl.local_tile import LocalTile, Staging
from atrous_cl.validation import check_conv_args, check_transpose_args

# (batch, height, width, in_channels, out_channels, kh, kw, rate)
SHAPES = [
    (1, 1, 1, 3, 2, 3, 3, 2),      # 1x1 image: most taps land outside
    (1, 1, 1, 1, 1, 1, 1, 1),      # the smallest problem
    (2, 5, 7, 3, 5, 3, 3, 1),      # odd COUT, width below one work-group
    (1, 9, 19, 5, 3, 2, 2, 3),     # even kernel, odd rate: asymmetric pads; width 19
    (1, 6, 17, 4, 7, 4, 4, 2),     # k 4, width one past 16
    (2, 7, 11, 6, 9, 5, 5, 4),     # k 5, rate 4: dilated kernel wider than the image
    (1, 4, 33, 17, 1, 3, 2, 2),    # CIN 17: a partial chunk of input channels; COUT 1
    (1, 12, 5, 2, 16, 1, 3, 3),    # 1 x k kernel, a full channel vector
    (1, 21, 6, 3, 3, 3, 3, 1),     # more rows than a 16-row work-group
    (1, 9, 9, 1, 2, 3, 3, 1),      # CIN 1, rows of a group on both sides of the image's edge
]
DTYPES = [np.float32, np.float64, np.float16]

#: Tiles besides the device's default: partial groups on every axis, several
#: pixels and channel slices a work-item, the widest vector.
TILES = [
    LocalTile(4, 3, 2, 2, 2),
    LocalTile(8, 2, 1, 3, 1),
    LocalTile(2, 4, 3, 1, 4),
    LocalTile(3, 2, 1, 2, 16),
]


def _transpose_case(shape, padding, dtype, rng):
    value, filters, output_shape, rate = transpose_inputs(shape, padding, dtype, rng)
    args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    return value, filters, args


def _run(queue, value, filters, args, tile, forward_filters=False):
    out = poisoned(queue, args.output_shape, value.dtype)
    event = local_tile.launch(queue, cl_array.to_device(queue, value),
                              cl_array.to_device(queue, filters), out, args, tile,
                              forward_filters=forward_filters)
    assert event is not None and out.events[-1] is event
    return out.get()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("shape", SHAPES, ids=case_id)
def test_default_tile_matches_reference(queue, shape, padding, dtype):
    skip_unsupported(queue, dtype)
    value, filters, args = _transpose_case(shape, padding, dtype, np.random.default_rng())
    want = reference.atrous_conv2d_transpose(value, filters, args.output_shape, args.rate, padding)
    assert_close(_run(queue, value, filters, args, None), want, dtype,
                 context=f"{shape} {padding}")


@pytest.mark.parametrize("tile", TILES, ids=str)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[3], SHAPES[5], SHAPES[6], SHAPES[9]],
                         ids=case_id)
@pytest.mark.hand_made_tiles
def test_tiles_match_reference(queue, shape, tile):
    padding = "SAME" if shape[7] % 2 else "VALID"
    value, filters, args = _transpose_case(shape, padding, np.float32, np.random.default_rng())
    want = reference.atrous_conv2d_transpose(value, filters, args.output_shape, args.rate, padding)
    assert_close(_run(queue, value, filters, args, tile), want, context=f"{shape} {tile}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [SHAPES[3], SHAPES[5]], ids=case_id)
def test_tap_at_a_time_staging(queue, monkeypatch, shape, dtype):
    """A budget too small for a tap row's window makes the kernel stage one tap at a time."""
    skip_unsupported(queue, dtype)
    value, filters, args = _transpose_case(shape, "SAME", dtype, np.random.default_rng())
    tile = LocalTile(8, 4, 1, 2, 4)
    budget = local_tile.staging_bytes(dtype, args, tile, Staging(1, 1))
    assert local_tile.choose_staging(dtype, args, tile, budget) == Staging(1, 1)
    monkeypatch.setattr(local_tile, "LOCAL_MEM_BUDGET", budget)
    want = reference.atrous_conv2d_transpose(value, filters, args.output_shape, args.rate, "SAME")
    assert_close(_run(queue, value, filters, args, tile), want, dtype, context=str(shape))


# (batch, height, width, in_channels, out_channels, kh, kw, rate) of the forward op
FORWARD_SHAPES = [
    (1, 1, 1, 2, 3, 3, 3, 2),
    (2, 6, 9, 3, 5, 3, 3, 2),
    (1, 10, 18, 4, 3, 2, 3, 3),
    (1, 13, 13, 17, 1, 5, 5, 1),
]


#: VALID only where the dilated kernel fits in the image (else the forward op has no output).
FORWARD_CASES = [(shape, padding) for shape in FORWARD_SHAPES for padding in ("SAME", "VALID")
                 if padding == "SAME" or min(shape[1] - (shape[5] - 1) * shape[7],
                                             shape[2] - (shape[6] - 1) * shape[7]) >= 1]


@pytest.mark.parametrize("tile", [None, TILES[0], TILES[3]], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape, padding", FORWARD_CASES,
                         ids=[f"{case_id(s)}-{p}" for s, p in FORWARD_CASES])
@pytest.mark.hand_made_tiles
def test_forward_filters_match_the_forward_reference(queue, shape, padding, dtype, tile):
    """With forward_filters the kernel runs atrous_conv2d, as ops does for training."""
    skip_unsupported(queue, dtype)
    n, h, w, cin, cout, kh, kw, rate = shape
    rng = np.random.default_rng()
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((kh, kw, cin, cout)).astype(dtype)  # the forward op's layout
    args = launch.forward_as_transpose(check_conv_args(value.shape, filters.shape, rate, padding))
    want = reference.atrous_conv2d(value, filters, rate, padding)
    assert_close(_run(queue, value, filters, args, tile, forward_filters=True), want, dtype,
                 context=f"{shape} {padding}")


def _small_equivalent(*sizes):
    """A rate whose taps land as every larger one does (see test_reliability)."""
    return 2 * max(sizes) + 2


@pytest.mark.parametrize("tile", [None, TILES[1]], ids=str)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("rate", [2**31, 2**40, 2**64 + 3], ids=lambda r: f"2^{r.bit_length() - 1}ish")
def test_huge_rates(queue, rate, k, tile):
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    filters = rng.standard_normal((k, k, 4, 3)).astype(np.float32)
    args = check_transpose_args(value.shape, filters.shape, (2, 5, 6, 4), rate, "SAME")
    want = reference.atrous_conv2d_transpose(value, filters, (2, 5, 6, 4), _small_equivalent(5, 6),
                                             "SAME")
    got = _run(queue, value, filters, args, tile) if k % 2 else None
    if got is None:  # no tap lands: launch fills zeros without building anything
        out = poisoned(queue, args.output_shape, np.float32)
        local_tile.launch(queue, cl_array.to_device(queue, value),
                          cl_array.to_device(queue, filters), out, args, tile)
        got = out.get()
        np.testing.assert_array_equal(got, 0)
    assert_close(got, want, context=f"k{k} rate {rate}")


@pytest.mark.parametrize("tile", [None, TILES[0]], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("cin", [3, 17], ids=lambda c: f"cin{c}")
def test_nan_and_inf_weights_at_taps_outside_the_input(queue, cin, padding, dtype, tile):
    """Taps whose input pixel lies outside value add nothing: no 0 * NaN or 0 * Inf terms.

    With 17 input channels the last chunk is partial: the weights past it (the
    next tap's, NaN here) must not be staged against its zero-filled channels.
    """
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng()
    value = rng.standard_normal((1, 4, 5, cin)).astype(dtype)
    filters = rng.standard_normal((3, 3, 5, cin)).astype(dtype)
    filters[0, 1] = np.nan  # lands on one row (SAME) or a block of columns (VALID)
    filters[2, 2, :, 0] = np.inf
    output_shape = (1, *geometry.transpose_output_hw((4, 5), (3, 3), 3, padding), 5)
    args = check_transpose_args(value.shape, filters.shape, output_shape, 3, padding)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, 3, padding)
    assert np.isnan(want).any() and np.isfinite(want).any()  # both kinds of pixel are tested
    assert_close(_run(queue, value, filters, args, tile), want, dtype, context=padding)


@pytest.mark.parametrize("tile", [None, TILES[0]], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(1, 4, 5, 3), (2, 6, 9, 17)], ids=lambda s: "x".join(map(str, s)))
def test_forward_filters_multiply_the_zero_padding(queue, shape, dtype, tile):
    """The forward conv (forward_filters) adds 0 * w where a tap reads TF's zero padding:
    NaN for an Inf or NaN weight, where the transpose adds nothing (SAME, rate 3: most
    taps of these images read padding)."""
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng()
    cin = shape[3]
    value = rng.standard_normal(shape).astype(dtype)
    filters = rng.standard_normal((3, 3, cin, 5)).astype(dtype)  # the forward op's layout
    filters[0, 1, :, 0] = np.nan  # output channel 0: NaN at every pixel
    filters[2, 2, cin - 1, 2] = np.inf  # channel 2: Inf inside, NaN from the padding
    filters[1, 0, 0, 4] = -np.inf
    args = launch.forward_as_transpose(check_conv_args(value.shape, filters.shape, 3, "SAME"))
    want = reference.atrous_conv2d(value, filters, 3, "SAME")
    assert np.isnan(want[..., 2]).any() and np.isnan(want[..., 4]).any()
    assert np.isfinite(want[..., 1]).all() and np.isfinite(want[..., 3]).all()
    assert_close(_run(queue, value, filters, args, tile, forward_filters=True), want, dtype)


def test_empty_inputs_give_zeros_and_an_empty_output_nothing(queue):
    """No input channels: an empty sum, zeros; no output elements: nothing enqueued."""
    value = np.zeros((1, 4, 4, 0), np.float32)
    filters = np.zeros((3, 3, 2, 0), np.float32)
    args = check_transpose_args(value.shape, filters.shape, (1, 4, 4, 2), 1, "SAME")
    out = poisoned(queue, args.output_shape, np.float32)
    local_tile.launch(queue, cl_array.to_device(queue, value), cl_array.to_device(queue, filters),
                      out, args)
    np.testing.assert_array_equal(out.get(), 0)
    empty_args = check_transpose_args((0, 4, 4, 1), (3, 3, 2, 1), (0, 4, 4, 2), 1, "SAME")
    empty = cl_array.empty(queue, (0, 4, 4, 2), np.float32)
    assert local_tile.launch(queue, cl_array.empty(queue, (0, 4, 4, 1), np.float32),
                             cl_array.to_device(queue, np.ones((3, 3, 2, 1), np.float32)),
                             empty, empty_args) is None


def test_out_of_order_queue_waits_for_inputs_and_chains_by_events(queue):
    """On an out-of-order queue the launch must wait for the inputs' producers."""
    props = cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE
    if not queue.device.queue_properties & props:
        pytest.skip(f"{queue.device.name} has no out-of-order queues")
    ooo = cl.CommandQueue(queue.context, queue.device, properties=props)
    rng = np.random.default_rng()
    value, filters, args = _transpose_case(SHAPES[5], "SAME", np.float32, rng)
    want = reference.atrous_conv2d_transpose(value, filters, args.output_shape, args.rate, "SAME")
    d_value = cl_array.to_device(ooo, value * 0.5)
    d_value *= 2  # a kernel on ooo whose event the launch must wait for
    out = poisoned(ooo, args.output_shape, np.float32)
    local_tile.launch(ooo, d_value, cl_array.to_device(ooo, filters), out, args, TILES[0])
    assert_close(out.get(), want, context="out-of-order")


# Pure functions and refusals.

@pytest.mark.parametrize("tile", [LocalTile(16, 16, 1, 1, 4), *TILES], ids=str)
@pytest.mark.parametrize("output_shape", [(1, 1, 1, 1), (2, 21, 37, 9), (3, 16, 16, 16)])
def test_geometry_covers_the_output_in_whole_work_groups(output_shape, tile):
    global_size, local_size = local_tile.geometry(output_shape, tile)
    assert local_size == (tile.slices, tile.width, tile.height)
    assert all(g % l == 0 for g, l in zip(global_size, local_size))
    n, oh, ow, cout = output_shape
    assert global_size[0] * tile.channels >= cout
    assert global_size[1] * tile.pixels >= ow
    groups_per_image = global_size[2] // n // tile.height
    assert global_size[2] == n * groups_per_image * tile.height and groups_per_image * tile.height >= oh
    # No more than one partial work-group along any axis.
    assert (global_size[0] - tile.slices) * tile.channels < cout
    assert (global_size[1] - tile.width) * tile.pixels < ow
    assert (groups_per_image - 1) * tile.height < oh


def test_tiles_read_back_as_written():
    for tile in TILES:
        assert LocalTile.parse(str(tile)) == tile
    assert LocalTile.parse("2x16x8/1x8") == LocalTile(16, 8, 2, 1, 8)


def test_choose_staging_prefers_a_whole_tap_row_and_respects_the_budget():
    args = check_transpose_args((1, 8, 40, 32), (3, 3, 8, 32), (1, 8, 40, 8), 2, "SAME")
    tile = LocalTile(16, 16, 1, 1, 4)
    assert local_tile.choose_staging(np.float32, args, tile, 32 * 1024) == Staging(16, 3)
    for budget in (1000, 5000, 20000, 32 * 1024, 10**6):
        staging = local_tile.choose_staging(np.float32, args, tile, budget)
        if staging is not None:
            assert local_tile.staging_bytes(np.float32, args, tile, staging) <= budget
    assert local_tile.choose_staging(np.float32, args, tile, 16 * 16 * 4) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_staged_pixels_are_an_odd_number_of_words_apart(queue, dtype):
    """An even chunk of input channels is staged one spare word apart per pixel, so that a
    row's work-items read one channel from different banks of a GPU's local memory (on an
    H200 the unpadded staging took 1.14-1.27x the time); both layouts compute the op."""
    value, filters, args = _transpose_case((1, 6, 21, 16, 5, 3, 3, 2), "SAME", dtype,
                                           np.random.default_rng())
    tile = LocalTile(8, 2, 1, 2, 4)
    budget = local_tile.local_budget(queue.device)
    staging = local_tile.choose_staging(dtype, args, tile, budget)
    assert (staging.chunk, staging.stride) == (16, 17)
    assert local_tile.choose_staging(dtype, args, tile, budget, padded=False).stride == 16
    assert "-DOCS=17" in local_tile.build_options(dtype, args, tile, budget=budget)
    assert local_tile.staging_bytes(dtype, args, tile, staging) > local_tile.staging_bytes(
        dtype, args, tile, staging._replace(padded=False))
    want = reference.atrous_conv2d_transpose(value, filters, args.output_shape, args.rate,
                                             args.padding)
    for padded in (True, False):
        out = poisoned(queue, args.output_shape, dtype)
        local_tile.launch(queue, cl_array.to_device(queue, value), cl_array.to_device(queue, filters),
                          out, args, tile, padded=padded)
        assert_close(out.get(), want, dtype, context=f"padded={padded}")


def test_build_options_refuse_a_tile_without_room(queue):
    args = check_transpose_args((1, 8, 40, 32), (3, 3, 8, 32), (1, 8, 40, 8), 2, "SAME")
    with pytest.raises(ValueError, match=r"tile 1x32x32/4x4 needs 20496 bytes of local memory "
                                         r"for float32, more than the 4096"):
        local_tile.build_options(np.float32, args, LocalTile(32, 32, 1, 4, 4), budget=4096)


@pytest.mark.parametrize("tile, error, match", [
    ((16, 16, 1, 1, 4), TypeError, r"tile must be an atrous_cl.local_tile.LocalTile, got tuple"),
    (LocalTile(16, 0, 1, 1, 4), ValueError, r"tile's fields must be positive ints, got LocalTile"),
    (LocalTile(16, 16, 1, 1, 3), ValueError, r"tile.channels must be one of \(1, 2, 4, 8, 16\)"),
    (LocalTile(4096, 4096, 1, 1, 4), ValueError, r"has 16777216 work-items, more than the"),
])
def test_bad_tiles_are_refused(queue, tile, error, match):
    value, filters, args = _transpose_case(SHAPES[2], "SAME", np.float32, np.random.default_rng())
    out = poisoned(queue, args.output_shape, np.float32)
    with pytest.raises(error, match=match):
        local_tile.launch(queue, cl_array.to_device(queue, value),
                          cl_array.to_device(queue, filters), out, args, tile)


def test_candidates_fit_the_device(queue):
    device = queue.device
    found = local_tile.candidates(device, np.float32, 8)
    assert found and local_tile.default_tile(device, np.float32, 8) in found
    for tile in found:
        local_tile.check_tile(device, tile)
        assert (tile.slices - 1) * tile.channels < 8
        staged = tile.height * tile.width * tile.pixels
        assert (staged + tile.slices * tile.channels) * 4 + staged <= local_tile.local_budget(device)


def test_the_main_kernel_declares_its_argument_types(queue):
    """Its signature, as the kernel file spells it, matches the dtypes launch declares."""
    import re


    source = programs.kernel_source(local_tile.KERNEL_FILE)
    params = re.search(r"void\s+atrous_conv2d_transpose_local\s*\(([^)]*)\)", source).group(1)
    want = {"long": np.int64, "int": np.int32}
    parsed = [None if "*" in p else want[p.split()[-2]] for p in params.split(",")]
    assert parsed == local_tile._MAIN_ARG_DTYPES
