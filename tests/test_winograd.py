# SPDX-License-Identifier: Apache-2.0
"""The Winograd kernel (F(2x2, 3x3) on the phase sub-grids, 3x3 filters): its tiles over
shapes it treats differently, the direct-sum fallback for non-finite values and
overflow, the forward op's flipped taps, and when the default takes it.

Tiles are small (2-4 blocks, 8-16 channels) so that a work-group's local memory fits
Oclgrind's 32 KiB, where CI checks these launches for races and out-of-bounds access.
On CPUs the op's default takes this kernel for 3x3 float32 problems, so the whole
shape table of tests/test_op.py runs it as well.
"""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
from conftest import assert_close, fitting, poisoned, skip_unsupported, stub_device

import atrous_cl
from atrous_cl import calls, geometry, launch, reference, tiles, tuning
from atrous_cl.tiles import Tile
from atrous_cl.validation import check_conv_args, check_transpose_args

#: n, h, w, cin, cout, rate, padding, kh, kw
SHAPES = [
    (1, 9, 13, 3, 5, 2, "SAME", 3, 3),      # odd sizes: blocks past the bottom and right edges
    (2, 6, 7, 17, 20, 1, "VALID", 3, 3),    # rate 1, input channels past a vector, two vectors
    (1, 10, 23, 4, 33, 3, "SAME", 3, 3),    # phases of 8 and 7 columns, cout past two vectors
    (3, 4, 6, 2, 3, 4, "SAME", 3, 3),       # phases one column wide, half-empty blocks
    (1, 5, 40, 16, 16, 5, "VALID", 3, 3),   # whole vectors in and out, rows of one phase each
    (1, 11, 9, 5, 6, 2, "SAME", 5, 5),      # four 3x3 parts, the last row and column padding
    (2, 7, 10, 3, 17, 1, "VALID", 3, 5),    # two parts along the row only
    (1, 12, 12, 2, 3, 2, "SAME", 7, 7),     # nine parts
]
#: Winograd tiles: blocks x channels (x vectors). 8-channel vectors are AVX2's (three of
#: them above 64 output channels there).
TILES = [Tile(2, 16, 1, True), Tile(4, 16, 2, True), Tile(3, 8, 2, True), Tile(1, 8, 1, True),
         Tile(4, 8, 3, True)]


def _problem(shape, dtype=np.float32, rng=None):
    n, h, w, cin, cout, rate, padding, kh, kw = shape
    rng = rng or np.random.default_rng()
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((kh, kw, cout, cin)).astype(dtype)
    output_shape = (n, *geometry.transpose_output_hw((h, w), (kh, kw), rate, padding), cout)
    return value, filters, output_shape, rate, padding


def _run(queue, value, filters, output_shape, rate, padding, tile, forward_filters=False):
    """The launch layer with ``tile`` into a poisoned output; also its plan's main kernel."""
    if forward_filters:
        args = launch.forward_as_transpose(check_conv_args(value.shape, filters.shape, rate, padding))
    else:
        args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    out = poisoned(queue, args.output_shape, value.dtype)
    launch.transpose(queue, cl_array.to_device(queue, value), cl_array.to_device(queue, filters),
                     out, args, tile, forward_filters)
    p = launch.launch_plan(queue.context, queue.device, value.dtype, args, tile, forward_filters)
    return out.get(), p.main_kernel


def _run_either(queue, value, filters, output_shape, rate, padding, tile, forward):
    """``(got, want)`` of the transpose op with ``filters`` (``[kh, kw, out, in]``) or, with
    ``forward``, of the forward op with the same filters as its ``[kh, kw, in, out]``, on
    the Winograd kernel with ``tile`` (asserted), and the reference's."""
    if forward:
        fwd = filters.transpose(0, 1, 3, 2).copy()
        want = reference.atrous_conv2d(value, fwd, rate, padding)
        got, kernel = _run(queue, value, fwd, None, rate, padding, tile, forward_filters=True)
    else:
        want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
        got, kernel = _run(queue, value, filters, output_shape, rate, padding, tile)
    assert kernel == "winograd_transpose"
    return got, want


def _fits(queue, tile, cin, kh=3, kw=3, dtype=np.float32):
    if tiles.winograd_split((kh, kw, 1, cin), tile, dtype, queue.device.local_mem_size) is None:
        pytest.skip(f"{queue.device.name}: {queue.device.local_mem_size} bytes of local memory")


@pytest.mark.parametrize("tile", TILES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.hand_made_tiles
def test_every_winograd_tile_matches_the_reference(queue, shape, tile):
    _fits(queue, tile, shape[3], *shape[7:])
    value, filters, output_shape, rate, padding = _problem(shape)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    got, kernel = _run(queue, value, filters, output_shape, rate, padding, tile)
    assert kernel == "winograd_transpose"
    assert_close(got, want, context=f"tile {tile}")


def test_huge_rates_and_views(queue):
    """A rate past the image (the kernel is built with a small equivalent rate and crop:
    phases of one row and column) and arrays that start inside their buffers."""
    (tile,) = fitting(queue.device, np.float32, [Tile(2, 16, 1, True)]) or [Tile(2, 8, 1, True)]
    rng = np.random.default_rng()
    value, filters, output_shape, _, _ = _problem((2, 5, 6, 3, 4, 1, "SAME", 3, 3), rng=rng)
    rate = 100
    assert launch.kernel_dilation(check_transpose_args(value.shape, filters.shape, (2, 5, 6, 4),
                                                       rate, "SAME"))[0] < rate  # replaced
    args = check_transpose_args(value.shape, filters.shape, (2, 5, 6, 4), rate, "SAME")
    want = reference.atrous_conv2d_transpose(value, filters, (2, 5, 6, 4), rate, "SAME")
    whole_v = cl_array.to_device(queue, np.concatenate([value[:1], value]))
    whole_f = cl_array.to_device(queue, np.concatenate([filters[:1], filters]))
    whole_o = poisoned(queue, (3, 5, 6, 4), np.float32)
    launch.transpose(queue, whole_v[1:], whole_f[1:], whole_o[1:], args, tile)
    got = whole_o.get()
    assert_close(got[1:], want)
    assert np.isnan(got[0]).all()  # nothing written before the view


@pytest.mark.parametrize("forward", [False, True], ids=["transpose", "forward"])
@pytest.mark.parametrize("kh, cin, run", [(3, 37, 16), (3, 1, 1), (15, 3, 1)],
                         ids=["runs", "one-channel", "unstaged"])
def test_the_repack_reads_runs_of_input_channels_from_any_element(queue, forward, kh, cin, run):
    """The repack's work-items load runs of input channels as one vector (16 here: 37 of
    them make two whole runs and a short one of 5, read element by element), from filters
    that start one element into their buffer, so no run is aligned to its vector; the
    forward op's filters hold output channels innermost and are read a vector of them at
    a time (13 output channels: one whole vector, then 5 lanes element by element). One
    input channel, or filters whose rows would not fit a work-item's private memory
    (15x15), take a work-item per input channel writing straight to its buffer."""
    tile = Tile(2, 8, 2, True)
    shape = (1, 6, 7, cin, 13, 2, "SAME", kh, kh)
    _fits(queue, tile, cin, kh, kh)
    assert launch.winograd_repack_run((kh, kh, 13, cin), tile, np.float32, True) == run
    rng = np.random.default_rng()
    value, filters, output_shape, rate, padding = _problem(shape, rng=rng)
    if forward:
        filters = filters.transpose(0, 1, 3, 2).copy()
        args = launch.forward_as_transpose(check_conv_args(value.shape, filters.shape, rate, padding))
        want = reference.atrous_conv2d(value, filters, rate, padding)
    else:
        args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
        want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    whole_f = cl_array.to_device(queue, np.concatenate([[np.float32(np.nan)], filters.ravel()]))
    out = poisoned(queue, args.output_shape, np.float32)
    launch.transpose(queue, cl_array.to_device(queue, value), whole_f[1:].reshape(filters.shape),
                     out, args, tile, forward)
    p = launch.launch_plan(queue.context, queue.device, np.float32, args, tile, forward)
    assert p.main_kernel == "winograd_transpose"
    assert f"-DRB={run}" in p.options
    assert_close(out.get(), want)


def test_repack_runs_fit_in_private_memory():
    """A Winograd repack work-item's run of input channels (its RB): the most of 16, 8, 4,
    2 whose rows (16 per 3x3 part and one per tap, a block of output channels each) and
    loaded weights (a vector of output channels per tap) fit in REPACK_PRIVATE_BYTES, an
    eighth of it off CPUs, and no longer than the input channels need; else 1. Its
    geometry: a work-item per run and block, one a work-group on CPUs."""
    tile = Tile(4, 8, 3, True)  # blocks of 24 output channels
    run = launch.winograd_repack_run
    assert launch.REPACK_PRIVATE_BYTES == 48 << 10
    # 3x3 float32: (25 rows x 24 + 9 taps x 8) x 4 bytes = 2688 a channel, 42 KiB at 16
    assert run((3, 3, 256, 1024), tile, np.float32, True) == 16
    assert run((3, 3, 256, 1024), tile, np.float16, True) == 16  # widened to float32 rows
    assert run((3, 3, 256, 1024), tile, np.float64, True) == 8  # 84 KiB at 16
    assert run((5, 5, 256, 1024), tile, np.float32, True) == 4  # 89 rows: 73 KiB at 8
    assert run((7, 7, 256, 1024), tile, np.float32, True) == 2  # 193 rows: 78.5 KiB at 4
    assert run((15, 15, 256, 1024), tile, np.float32, True) == 1  # 625 rows: 131 KiB at 2
    assert run((3, 3, 256, 1024), tile, np.float32, False) == 2  # 5.25 KiB at 2 of 6
    assert run((3, 3, 256, 1024), Tile(4, 16, 2, True), np.float32, False) == 1  # 7.4 KiB
    assert [run((3, 3, 256, cin), tile, np.float32, True) for cin in (1, 2, 3, 4, 5, 8, 9)] == \
        [1, 2, 4, 4, 8, 8, 16]
    assert launch.winograd_repack_geometry((3, 3, 256, 1000), tile, 16, True) == ((63, 11), (1, 1))
    assert launch.winograd_repack_geometry((3, 3, 256, 1000), tile, 2, False) == ((500, 11), None)


NON_FINITE_AT = [(0, 0, 5, 1), (2, 2, 0, 0), (1, 1, 12, 2), (2, 1, 9, 1), (0, 2, 17, 0)]


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan], ids=str)
@pytest.mark.parametrize("where", NON_FINITE_AT, ids=lambda w: "a%db%dc%do%d" % w)
def test_a_non_finite_weight_reaches_only_its_taps_outputs(queue, where, bad):
    """Winograd spreads a non-finite weight over its block and times the zeros outside
    the image; the direct-sum fallback must give exactly the op's terms: NaN and Inf
    only where the reference has them, and the other outputs right."""
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 7, 11, 3)).astype(np.float32)
    filters = rng.standard_normal((3, 3, 18, 3)).astype(np.float32)
    filters[where] = bad
    want = reference.atrous_conv2d_transpose(value, filters, (2, 7, 11, 18), 2, "SAME")
    assert not np.isfinite(want).all() and np.isfinite(want).any()
    for tile in fitting(queue.device, np.float32, (Tile(2, 16, 1, True), Tile(3, 8, 2, True))):
        got, _ = _run(queue, value, filters, (2, 7, 11, 18), 2, "SAME", tile)
        assert_close(got, want, context=f"tile {tile}")


def test_non_finite_inputs_stay_where_they_land(queue):
    """An Inf or NaN input reaches the outputs whose windows hold it (with Inf - Inf
    and Inf * 0 = NaN as the direct sum has them), not the rest of its block."""
    rng = np.random.default_rng()
    value = rng.standard_normal((1, 8, 12, 2)).astype(np.float32)
    value[0, :, 0, 0] = np.inf
    value[0, :, -1, 1] = np.nan
    value[0, 3, 5, 0] = -np.inf
    value[0, 4, 5, 0] = np.inf
    filters = rng.standard_normal((3, 3, 4, 2)).astype(np.float32)
    filters[1, 1, 2, 0] = 0.0  # Inf * 0: NaN where the centre tap meets an Inf
    (tile,) = fitting(queue.device, np.float32, [Tile(2, 16, 1, True)]) or [Tile(2, 8, 1, True)]
    for rate, padding in ((1, "SAME"), (2, "VALID"), (3, "SAME")):
        output_shape = (1, *geometry.transpose_output_hw((8, 12), (3, 3), rate, padding), 4)
        want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
        got, _ = _run(queue, value, filters, output_shape, rate, padding, tile)
        assert_close(got, want, context=f"rate {rate} {padding}")


def test_an_overflowing_transform_takes_the_direct_sum(queue):
    """Inputs near float32's largest value overflow the input transform (d1 + d2) where
    the direct sum does not (+w and -w taps cancel): the fallback's sum is the direct
    kernel's, and finite."""
    big = np.float32(3e38)
    value = np.zeros((1, 4, 4, 1), np.float32)
    value[0, :, 1:3, 0] = big
    filters = np.zeros((3, 3, 2, 1), np.float32)  # two channels: one is the one-channel kernel's
    filters[1, 0, :, 0], filters[1, 1, :, 0] = 1.0, -1.0  # out[p, q] = value[p, q + 1] - value[p, q]
    output_shape = (1, 4, 4, 2)
    direct, _ = _run(queue, value, filters, output_shape, 1, "SAME", Tile(4, 1))
    assert np.isfinite(direct).all()
    got, kernel = _run(queue, value, filters, output_shape, 1, "SAME", Tile(2, 8, 1, True))
    assert kernel == "winograd_transpose"
    assert np.isfinite(got).all()
    assert_close(got, direct)  # the same sum (bit for bit where both contract alike)


@pytest.mark.parametrize("tile", [Tile(2, 16, 1, True), Tile(4, 8, 3, True)], ids=str)
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.hand_made_tiles
def test_the_forward_op_multiplies_the_zero_padding(queue, padding, tile):
    """The forward conv runs this kernel with the taps flipped (FORWARD_FILTERS); with
    SAME, TF multiplies its zero padding by the weights, so an Inf weight makes NaN
    there, and the fallback must add those terms too."""
    rng = np.random.default_rng()
    value = rng.standard_normal((1, 9, 10, 3)).astype(np.float32)
    filters = rng.standard_normal((3, 3, 3, 6)).astype(np.float32)  # [kh, kw, in, out]
    want = reference.atrous_conv2d(value, filters, 2, padding)
    got, kernel = _run(queue, value, filters, None, 2, padding, tile, True)
    assert kernel == "winograd_transpose"
    assert_close(got, want)
    filters[0, 2, 1, 4] = np.inf
    want = reference.atrous_conv2d(value, filters, 2, padding)
    got, _ = _run(queue, value, filters, None, 2, padding, tile, True)
    assert_close(got, want)


@pytest.mark.parametrize("forward", [False, True], ids=["transpose", "forward"])
@pytest.mark.parametrize("dtype, big", [(np.float32, 1e30), (np.float64, 1e300)])
@pytest.mark.parametrize("k", [3, 6])
@pytest.mark.hand_made_tiles
def test_a_tap_that_never_lands_stays_out_of_the_transform(queue, k, dtype, big, forward):
    """On a 4x4 image at rate 2 (SAME), the corner taps of a 6x6 filter land outside it for
    every output pixel (of a 3x3 filter at rate 5, all but the centre): they add no term
    (the forward op: 0 * w). A huge weight there, mixed into its 3x3 part's transform,
    cost the other outputs their digits (relative error 0.68 at 1e30, 2e-3 at 1e6);
    left out, the error is the float's. A NaN there: every output NaN (the forward op's
    0 * NaN) or none (the transpose op)."""
    tile = Tile(2, 8, 2, True)
    _fits(queue, tile, 1, k, k, dtype)
    skip_unsupported(queue, dtype)
    rate = 2 if k == 6 else 5
    rng = np.random.default_rng()
    value = rng.standard_normal((1, 4, 4, 1)).astype(dtype)
    shape = (k, k, 1, 17) if forward else (k, k, 17, 1)
    filters = rng.standard_normal(shape).astype(dtype)
    for weight in (big, np.nan):
        filters[0, 0, 0, 0] = weight
        if forward:
            want = reference.atrous_conv2d(value, filters, rate, "SAME")
            got, kernel = _run(queue, value, filters, None, rate, "SAME", tile, True)
        else:
            want = reference.atrous_conv2d_transpose(value, filters, (1, 4, 4, 17), rate, "SAME")
            got, kernel = _run(queue, value, filters, (1, 4, 4, 17), rate, "SAME", tile)
        assert kernel == "winograd_transpose"
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isnan(want[..., 0]).all() if forward and weight != big else \
            not np.isnan(want).any()
        finite = np.isfinite(want)
        assert_close(got[finite], want[finite], dtype)


@pytest.mark.parametrize("tile", [Tile(2, 8, 2, True), Tile(4, 4, 3, True)], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[5]], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.hand_made_tiles
def test_float64(queue, shape, tile):
    """float64 sums in double, vectors of 8 (two for more output channels; three vectors
    of 4 on AVX2)."""
    skip_unsupported(queue, np.float64)
    _fits(queue, tile, shape[3], *shape[7:], dtype=np.float64)
    value, filters, output_shape, rate, padding = _problem(shape, np.float64)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    got, kernel = _run(queue, value, filters, output_shape, rate, padding, tile)
    assert kernel == "winograd_transpose"
    assert_close(got, want, np.float64)


@pytest.mark.parametrize("tile", [Tile(2, 16, 1, True), Tile(4, 8, 3, True)], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[6]], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.hand_made_tiles
def test_float16_as_stored(queue, shape, tile):
    """float16 reaches the Winograd kernel as stored, never widened (the input transform
    converts it), summed in float32: ragged channels take the halves one by one."""
    value, filters, output_shape, rate, padding = _problem(shape, np.float16)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    got, kernel = _run(queue, value, filters, output_shape, rate, padding, tile)
    assert kernel == "winograd_transpose"
    assert_close(got, want, np.float16)
    args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    p = launch.launch_plan(queue.context, queue.device, np.float16, args, tile)
    assert not p.wide and "-DWIDE_INPUTS" not in p.options


def test_without_room_the_direct_kernel_runs(queue):
    """A Winograd tile whose work-group needs more local memory than the device has, even
    with its input channels in chunks of one vector and one register tile's products, runs
    the direct kernel (a tuning file from another machine may name one)."""
    blocks = queue.device.local_mem_size // (4 * 16 * (16 + 16)) + 1
    tile = Tile(blocks, 16, 1, True)
    args = check_transpose_args((1, 4, 4 * blocks, 40), (3, 3, 2, 40), (1, 4, 4 * blocks, 2), 1,
                                "SAME")
    assert tiles.winograd_split(args.filters_shape, tile, np.float32,
                                queue.device.local_mem_size) is None
    p = launch.launch_plan(queue.context, queue.device, np.float32, args, tile)
    assert p.main_kernel == "atrous_conv2d_transpose"
    # one block fewer fits, in chunks of one vector (not built: the chunk tests run such)
    fits = tile._replace(pixels=blocks - 1)
    assert tiles.winograd_split(args.filters_shape, fits, np.float32,
                                queue.device.local_mem_size).chunk == 16


def test_winograd_tile_needs_3x3_float32_and_room(monkeypatch):
    cpu = stub_device(type=cl.device_type.CPU, local_mem_size=256 << 10,
                      platform=type("P", (), {"name": "Intel(R) OpenCL"})(), name="Intel(R) Xeon")
    assert tiles.winograd_tile(cpu, np.float32, (3, 3, 64, 64)) == Tile(8, 16, 2, True)
    assert tiles.winograd_tile(cpu, np.float32, (3, 3, 16, 32)) == Tile(8, 16, 1, True)
    assert tiles.winograd_tile(cpu, np.float16, (3, 3, 64, 64)) is not None  # widened
    assert tiles.winograd_tile(cpu, np.float32, (5, 5, 16, 16)) == Tile(8, 16, 1, True)
    assert [tiles.winograd_parts(k, k) for k in range(1, 10)] == [None, None, 1, None, 4, 4, 9, 9, 9]
    assert tiles.winograd_parts(3, 5) == 2 and tiles.winograd_parts(1, 3) is None
    assert tiles.winograd_tile(cpu, np.float64, (3, 3, 64, 64)) == Tile(8, 8, 2, True)
    for dtype, shape in ((np.float32, (4, 4, 8, 8)), (np.float32, (3, 1, 8, 8))):
        assert tiles.winograd_tile(cpu, dtype, shape) is None, (dtype, shape)
    # input channels past the local memory come in chunks
    for dtype, shape in ((np.float64, (3, 3, 8, 2048)), (np.float32, (3, 3, 8, 4096))):
        tile = tiles.winograd_tile(cpu, dtype, shape)
        assert tile is not None, (dtype, shape)
        assert tiles.winograd_split(shape, tile, dtype, 256 << 10).chunk < shape[3]
    gpu = stub_device(local_mem_size=48 << 10)
    assert tiles.winograd_tile(gpu, np.float16, (3, 3, 8, 8)) is None  # not widened there
    # 256-bit vectors (PyPI's PoCL, Intel's runtime on AVX2): 8 floats or 4 doubles a
    # vector, 4 blocks, two vectors where the channels fill them, three above 64 channels.
    pocl = stub_device(type=cl.device_type.CPU, local_mem_size=4 << 20,
                       platform=type("P", (), {"name": "Portable Computing Language"})(),
                       version="OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-znver3")
    narrow_intel = stub_device(type=cl.device_type.CPU, local_mem_size=256 << 10,
                               platform=type("P", (), {"name": "Intel(R) OpenCL"})(),
                               native_vector_width_float=8)
    monkeypatch.setattr(tiles, "_host_avx512", lambda: False)
    for device in (pocl, narrow_intel):
        for dtype, cout, want in (
                (np.float32, 8, Tile(4, 8, 1, True)), (np.float32, 9, Tile(4, 8, 2, True)),
                (np.float32, 64, Tile(4, 8, 2, True)), (np.float32, 65, Tile(4, 8, 3, True)),
                (np.float32, 128, Tile(4, 8, 3, True)), (np.float16, 64, Tile(4, 8, 2, True)),
                (np.float16, 128, Tile(4, 8, 3, True)), (np.float64, 4, Tile(4, 4, 1, True)),
                (np.float64, 64, Tile(4, 4, 2, True)), (np.float64, 65, Tile(4, 4, 3, True))):
            assert tiles.winograd_tile(device, dtype, (3, 3, cout, 64)) == want, (device, dtype, cout)
        assert tiles.winograd_tile(device, np.float32, (3, 3, 64, 64), 8) == Tile(8, 8, 2, True)
        # tune tries one to four vectors there (tiles tuned before took one or four), as
        # many as the channels fill, where a work-group's local memory holds them
        def wino(device, cout):
            return [t for t in tiles.candidates(device, np.float32, cout, (3, 3, cout, 64))
                    if t.winograd]
        assert set(wino(device, 128)) == {Tile(b, 8, v, True) for b in (4, 8) for v in (1, 2, 3, 4)}
        assert set(wino(device, 17)) == {Tile(b, 8, v, True) for b in (4, 8) for v in (1, 2, 3)}
        assert wino(device, 8) == [Tile(4, 8, 1, True), Tile(8, 8, 1, True)]
    # 4 blocks and 4 vectors need 10 KiB even with their input channels in chunks of one
    # vector, 3 vectors 8 KiB; 8 blocks more
    small = stub_device(type=cl.device_type.CPU, local_mem_size=9000,
                        platform=type("P", (), {"name": "Portable Computing Language"})(),
                        version="OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-znver3")
    assert wino(small, 128) == [Tile(4, 8, 3, True), Tile(4, 8, 1, True), Tile(4, 8, 2, True)]
    assert Tile.parse("8x16x2w") == Tile(8, 16, 2, True) and str(Tile(8, 16, 2, True)) == "8x16x2w"
    assert Tile.parse("8x16") == Tile(8, 16)


def test_the_default_takes_winograd_on_cpus_unless_turned_off(queue, monkeypatch):
    """3x3 float32 problems of two rows and columns per phase or more take the Winograd
    kernel on CPUs (24 output channels: fewer keep the direct kernel on some, test_tuning);
    ATROUS_CL_WINOGRAD=0 turns it off for problems not yet run."""
    args = check_transpose_args((1, 8, 8, 4), (3, 3, 24, 4), (1, 8, 8, 24), 2, "SAME")
    cpu = bool(queue.device.type & cl.device_type.CPU)
    want = tiles.winograd_tile(queue.device, np.float32, args.filters_shape) if cpu else None
    direct = (tiles.gpu_tile(args) if queue.device.type & cl.device_type.GPU and not cpu
              else tiles.default_tile(queue.device, np.float32, 24))
    assert tiles.default_for(queue.device, np.float32, args) == (want or direct)
    one_row = check_transpose_args((1, 8, 8, 4), (3, 3, 24, 4), (1, 8, 8, 24), 8, "SAME")
    assert not tiles.default_for(queue.device, np.float32, one_row).winograd
    five = check_transpose_args((1, 8, 8, 4), (5, 5, 24, 4), (1, 8, 8, 24), 2, "SAME")
    assert not tiles.default_for(queue.device, np.float32, five).winograd  # 64 of 100: slower
    # 6x6 takes four 3x3 parts. On 32x32 pixels, not 8x8: there, at rate 2, most taps read
    # outside the image, and the Winograd blocks may take more multiplies than the direct
    # sum's terms with some direct tiles (tiles.winograd_pays).
    six = check_transpose_args((1, 32, 32, 4), (6, 6, 24, 4), (1, 32, 32, 24), 2, "SAME")
    fits = tiles.winograd_tile(queue.device, np.float32, six.filters_shape) is not None
    assert tiles.default_for(queue.device, np.float32, six).winograd == (cpu and fits)
    for off in ("0", "false", " OFF", "no"):
        monkeypatch.setenv("ATROUS_CL_WINOGRAD", off)
        assert tiles.default_for(queue.device, np.float32, args) == direct, off


def test_large_winograd_filters_take_groups_of_output_channels():
    """Transformed filters past tiles.WINOGRAD_ONE_GROUP_BYTES (768->768 3x3 float32: 36 MiB)
    split the output channels into as few groups of whole register tiles as keep each
    group's share within tiles.WINOGRAD_GROUP_BYTES, as even as they go; the default still
    takes Winograd."""
    device = stub_device(type=cl.device_type.CPU, local_mem_size=2**20,
                         platform=type("P", (), {"name": "Portable Computing Language"})(),
                         version="OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-znver3")
    args = check_transpose_args((1, 32, 32, 768), (3, 3, 768, 768), (1, 32, 32, 768), 1, "SAME")
    tile = tiles.winograd_tile(device, np.float32, args.filters_shape)
    assert tile == Tile(4, 8, 3, True)
    size = tiles.winograd_filter_bytes(args.filters_shape, tile, np.float32)
    assert size == 16 * 768 * 768 * 4 > tiles.WINOGRAD_GROUP_BYTES
    assert tiles.default_for(device, np.float32, args) == tile
    # 32 tiles of 24 channels, 1.125 MiB each: 7 groups of 5 (the last of 2) within 6 MiB
    assert tiles.winograd_cout_group(args.filters_shape, tile, np.float32) == 120
    for dtype in (np.float16, np.float32, np.float64):
        for filters_shape in ((3, 3, 768, 768), (3, 3, 1000, 300), (6, 6, 512, 512),
                              (3, 3, 24, 100000), (3, 3, 256, 256)):
            t = tiles.winograd_tile(device, dtype, filters_shape) or tile
            step, coutp = t.channels * t.vectors, t.padded_channels(filters_shape[2])
            group = tiles.winograd_cout_group(filters_shape, t, dtype)
            if tiles.winograd_filter_bytes(filters_shape, t, dtype) <= tiles.WINOGRAD_ONE_GROUP_BYTES:
                assert group == coutp, (dtype, filters_shape)
                continue
            groups = -(-coutp // group)
            share = tiles.winograd_filter_bytes(filters_shape[:2] + (group, filters_shape[3]), t,
                                                dtype)
            assert group % step == 0 and 0 < group <= coutp, (dtype, filters_shape)
            # within the limit (a register tile's channels at least), in as few groups as that takes
            assert share <= tiles.WINOGRAD_GROUP_BYTES or group == step, (dtype, filters_shape)
            one = tiles.winograd_filter_bytes(filters_shape[:2] + (step, filters_shape[3]), t,
                                              dtype)
            assert groups == -(-coutp // (step * max(1, tiles.WINOGRAD_GROUP_BYTES // one)))
            assert group - step < -(-coutp // groups)  # no larger than the groups need
            assert coutp - (groups - 1) * group > 0  # no empty group
    assert tiles.winograd_cout_group((3, 3, 256, 256), tile, np.float32) == 264  # 4.1 MiB: one
    # 12.5 MiB: one group (more would recompute the input transform for little)
    assert tiles.winograd_cout_group((3, 3, 448, 448), tile, np.float32) == 456
    assert tiles.winograd_cout_group((3, 3, 512, 512), tile, np.float32) == 192  # 16.5 MiB: 3


@pytest.mark.parametrize("platform, intel_host, want", [
    ("Intel(R) OpenCL", True, (1 << 20, 1 << 20)),
    ("Intel(R) OpenCL", False, (tiles.WINOGRAD_GROUP_BYTES, tiles.WINOGRAD_ONE_GROUP_BYTES)),
    ("Portable Computing Language", True,
     (tiles.WINOGRAD_GROUP_BYTES, tiles.WINOGRAD_ONE_GROUP_BYTES)),
])
def test_intels_runtime_on_an_intel_cpu_takes_winograd_groups_within_one_mib(
        monkeypatch, platform, intel_host, want):
    """tiles.INTEL_HOST_GROUP_BYTES: on an Intel Xeon, Intel's runtime ran the Winograd
    kernel 1.2-2.3x faster from 256 channels with each group's transformed filters within
    1 MiB; PyPI's PoCL there, and Intel's runtime on AMD CPUs, keep the limits they were
    measured with. The launch builds the kernel with that group."""
    monkeypatch.setattr(tiles, "_host_intel", lambda: intel_host)
    device = stub_device(type=cl.device_type.CPU, local_mem_size=256 << 10,
                         platform=type("P", (), {"name": platform})(),
                         version="OpenCL 3.0 PoCL HSTR: pthread-x86_64-pc-linux-gnu-icelake-client")
    assert tiles.winograd_group_bytes(device) == want
    tile = Tile(8, 16, 2, True)
    group = tiles.winograd_cout_group((3, 3, 256, 256), tile, np.float32, device)
    # 256 channels: 4 MiB of transformed filters, 0.5 MiB a register tile's 32 channels.
    assert group == (64 if want[0] == 1 << 20 else 256)
    assert tiles.winograd_split((3, 3, 256, 256), tile, np.float32, 256 << 10,
                                device).group == group
    # Filters within the limit stay in one group (128 channels: 1 MiB).
    assert tiles.winograd_cout_group((3, 3, 128, 128), tile, np.float32, device) == 128
    assert tiles.winograd_group_bytes(None) == (tiles.WINOGRAD_GROUP_BYTES,
                                                tiles.WINOGRAD_ONE_GROUP_BYTES)


def test_the_host_cpu_is_read_from_proc_cpuinfo(monkeypatch, tmp_path):
    """tiles._cpuinfo reads the first value of a field, '' where there is none or the file
    cannot be read."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f\n"
                    "processor\t: 1\nvendor_id\t: AuthenticAMD\n")
    for path, vendor, avx512 in ((info, True, True), (tmp_path / "missing", False, False)):
        monkeypatch.setattr(tiles, "_CPUINFO", str(path))
        tiles._cpuinfo.cache_clear()
        try:
            assert tiles._host_intel() is vendor and tiles._host_avx512() is avx512
            assert tiles._cpuinfo("no such field") == ""
        finally:
            tiles._cpuinfo.cache_clear()


def test_many_input_channels_take_winograd_only_where_it_saves_more():
    """Past tiles.WINOGRAD_WIDE_INPUTS input channels the default takes the Winograd kernel
    only where it counts at most tiles.WINOGRAD_WIDE_BELOW of the direct kernel's
    multiplies (rates 1-2: 0.45), not on DeepLab's ASPP shapes (rate 6 on 33 pixels:
    0.63), which up to that many channels it takes; input channels past the local memory
    come in chunks."""
    device = stub_device(type=cl.device_type.CPU, local_mem_size=256 << 10,
                         platform=type("P", (), {"name": "Intel(R) OpenCL"})(), name="AMD EPYC",
                         native_vector_width_float=8, preferred_vector_width_float=8)

    def default(cin, cout, size, rate):
        args = check_transpose_args((1, size, size, cin), (3, 3, cout, cin),
                                    (1, size, size, cout), rate, "SAME")
        return tiles.default_for(device, np.float32, args)
    assert tiles.WINOGRAD_WIDE_BELOW < 0.63 < tiles.WINOGRAD_BELOW
    for cin in (1024, 2048):
        tile = default(cin, 512, 32, 1)
        assert tile.winograd, cin
        assert tiles.winograd_split((3, 3, 512, cin), tile, np.float32, 256 << 10).chunk < cin
        assert not default(cin, 256, 33, 6).winograd, cin
    assert default(tiles.WINOGRAD_WIDE_INPUTS, 256, 33, 6).winograd
    assert not default(tiles.WINOGRAD_WIDE_INPUTS + 8, 256, 33, 6).winograd


@pytest.fixture
def small_groups(monkeypatch):
    """Plans built with tiles.WINOGRAD_GROUP_BYTES as the test sets it (the plans cached
    before and after it are forgotten)."""
    launch.plan.cache_clear()
    monkeypatch.setattr(tiles, "WINOGRAD_ONE_GROUP_BYTES", 0)
    yield lambda nbytes: monkeypatch.setattr(tiles, "WINOGRAD_GROUP_BYTES", nbytes)
    launch.plan.cache_clear()


#: Filters, tile and groups of register tiles: shape (of SHAPES), tile, tiles a group
GROUPED = [(2, Tile(2, 8, 1, True), 1),   # 33 channels: 5 groups of one vector, the last of 1
           (2, Tile(2, 8, 1, True), 2),   # 3 groups of two, the last of one
           (1, Tile(3, 8, 2, True), 1),   # 20 channels: two groups of two vectors
           (5, Tile(2, 4, 1, True), 1),   # four 3x3 parts, 6 channels in two groups
           (0, Tile(2, 4, 1, True), 1)]   # 5 channels: two groups, the last of 1 channel


@pytest.mark.parametrize("forward", [False, True], ids=["transpose", "forward"])
@pytest.mark.parametrize("case", GROUPED, ids=lambda c: f"{c[1]}-{c[2]}of{'x'.join(map(str, SHAPES[c[0]]))}")
def test_groups_of_output_channels_match_the_reference(queue, small_groups, case, forward):
    """The Winograd kernel with its output channels in groups (tiles.winograd_cout_group:
    large filters; small ones here, with a small limit), the last group short where the
    register tiles do not divide evenly; every output written once, poisoned before."""
    index, tile, per_group = case
    shape = SHAPES[index]
    _fits(queue, tile, shape[3], *shape[7:])
    value, filters, output_shape, rate, padding = _problem(shape)
    step = tile.channels * tile.vectors
    small_groups(tiles.winograd_filter_bytes(filters.shape[:2] + (per_group * step, shape[3]),
                                             tile, np.float32))
    group = tiles.winograd_cout_group(filters.shape, tile, np.float32)
    assert group == per_group * step < tile.padded_channels(shape[4])
    got, want = _run_either(queue, value, filters, output_shape, rate, padding, tile, forward)
    assert_close(got, want, context=f"tile {tile}, groups of {group}")


@pytest.fixture
def chunks(monkeypatch):
    """``set(filters_shape, tile, vectors, group_tiles=None)``: plans built as if the
    device had only the local memory that holds a chunk of ``vectors`` vectors of input
    channels beside the products of a group (of ``group_tiles`` register tiles, or of
    every output channel); the plans cached before and after are forgotten."""
    launch.plan.cache_clear()

    def set_chunks(filters_shape, tile, vectors, group_tiles=None):
        kh, kw, cout, cin = filters_shape
        step = tile.channels * tile.vectors
        group = tile.padded_channels(cout)
        if group_tiles is not None:
            group = group_tiles * step
            monkeypatch.setattr(tiles, "WINOGRAD_ONE_GROUP_BYTES", 0)
            monkeypatch.setattr(tiles, "WINOGRAD_GROUP_BYTES", tiles.winograd_filter_bytes(
                (kh, kw, group, cin), tile, np.float32))
        local = 4 * 16 * tile.pixels * (tiles.winograd_parts(kh, kw) * vectors * tile.channels
                                        + group)
        monkeypatch.setattr(launch, "winograd_split",
                            lambda f, t, d, _, device=None: tiles.winograd_split(f, t, d, local,
                                                                                 device))
        return tiles.winograd_split(filters_shape, tile, np.float32, local)
    yield set_chunks
    launch.plan.cache_clear()


#: n, h, w, cin, cout, rate, padding, kh, kw; tile; vectors a chunk; register tiles a group
CHUNKED = [((2, 6, 7, 17, 8, 1, "VALID", 3, 3), Tile(3, 8, 1, True), 1, None),   # 3 chunks, 1 channel in the last
           ((2, 6, 7, 17, 20, 1, "VALID", 3, 3), Tile(3, 8, 2, True), 2, 1),     # 16 + 8, groups of 16 channels
           ((1, 9, 13, 20, 9, 2, "SAME", 3, 3), Tile(2, 4, 2, True), 2, None),   # 8, 8, 4
           ((1, 11, 9, 5, 6, 2, "SAME", 5, 5), Tile(2, 4, 1, True), 1, 1),       # four parts, 4 + 4
           ((1, 12, 12, 10, 3, 2, "SAME", 7, 7), Tile(2, 4, 1, True), 1, None),  # nine parts, 4 x 3
           ((1, 10, 23, 28, 33, 3, "SAME", 3, 3), Tile(2, 8, 1, True), 1, 2)]    # 4 chunks, 5 tiles in 3 groups


@pytest.mark.parametrize("forward", [False, True], ids=["transpose", "forward"])
@pytest.mark.parametrize("case", CHUNKED, ids=lambda c: f"{c[1]}-{c[2]}v-g{c[3]}-" + "x".join(map(str, c[0])))
def test_chunks_of_input_channels_match_the_reference(queue, chunks, case, forward):
    """The Winograd kernel with its input channels in chunks (tiles.winograd_split: where
    all of their transforms would not fit the local memory; small chunks here, as if it
    were small), the products of the group's channels adding up across
    chunks, with and without groups of output channels, the last chunk short; every
    output written once, poisoned before; an Inf input in a later chunk reaches the
    outputs that read it, as the direct sum has it."""
    shape, tile, vectors, group_tiles = case
    n, h, w, cin, cout, rate, padding, kh, kw = shape
    split = chunks((kh, kw, cout, cin), tile, vectors, group_tiles)
    if tiles.winograd_local_bytes(tile, tiles.winograd_parts(kh, kw), split, cin) > \
            queue.device.local_mem_size:
        pytest.skip(f"{queue.device.name}: {queue.device.local_mem_size} bytes of local memory")
    assert split.chunk == vectors * tile.channels < cin
    if group_tiles is not None:
        assert split.group == group_tiles * tile.channels * tile.vectors
    value, filters, output_shape, rate, padding = _problem(shape)
    value[0, h // 2, w // 2, cin - 1] = np.inf  # in the last chunk
    got, want = _run_either(queue, value, filters, output_shape, rate, padding, tile, forward)
    assert not np.isfinite(want).all()
    assert_close(got, want, context=f"tile {tile}, {split}")


def test_the_op_computes_the_same_with_winograd_off(queue, monkeypatch):
    """The host call with the default tile and with ATROUS_CL_WINOGRAD=0 (a new process
    stands in: the memos forgotten) agree to float32's bound."""
    value, filters, output_shape, rate, padding = _problem((2, 12, 14, 20, 24, 2, "SAME", 3, 3))
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    on = atrous_cl.atrous_conv2d_transpose(value, filters, output_shape, rate, padding, queue=queue)
    monkeypatch.setenv("ATROUS_CL_WINOGRAD", "0")
    tuning._memo_table = None
    calls.forget_prepared()
    off = atrous_cl.atrous_conv2d_transpose(value, filters, output_shape, rate, padding, queue=queue)
    assert_close(on, want)
    assert_close(off, want)
