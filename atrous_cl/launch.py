# SPDX-License-Identifier: Apache-2.0
"""The launch layer of the transpose kernel file: build options, plans, launches.

``kernels/atrous_conv2d_transpose.cl`` computes the transpose op, and with
``forward_filters`` the forward ``atrous_conv2d`` (:func:`forward_as_transpose`).
:func:`transpose` launches it on device arrays (or :class:`~atrous_cl.memory.HostArray`),
following pyopencl's event conventions; the host-call path (:mod:`atrous_cl.calls`)
and ``atrous-cl tune`` (:mod:`atrous_cl.tuning`) both launch through it. The
filter gradient's kernel file has its own layer, :mod:`atrous_cl.filter_grad`.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Callable, NamedTuple

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from atrous_cl import geometry, memory, programs
from atrous_cl.errors import DeviceError
from atrous_cl.facts import describe, facts, is_intel_cpu, status_name
from atrous_cl.tiles import (Tile, acc_itemsize, consecutive_pixels, default_tile, gpu_only,
                             pixel_vector, winograd_parts, winograd_split, WinogradSplit)
from atrous_cl.validation import ConvArgs, TransposeArgs

#: The kernel file this layer launches.
KERNEL_FILE = "atrous_conv2d_transpose.cl"
#: The Winograd kernel's file (tiles with ``winograd``), launched the same way.
WINOGRAD_FILE = "atrous_conv2d_transpose_winograd.cl"

_INT32_MAX = 2**31 - 1


#: Storage and accumulation types per dtype (float16 is storage only, summed in float32).
TYPE_OPTIONS = {np.float16: ("-DT=half", "-DACC=float", "-DUSE_HALF"),
                np.float32: ("-DT=float", "-DACC=float"),
                np.float64: ("-DT=double", "-DACC=double", "-DUSE_FP64")}


def widens_inputs(device: cl.Device, dtype) -> bool:
    """Whether float16 inputs are widened to float32 before the main kernel.

    On CPUs: converting every half in the inner loop held float16 to 70
    GFLOP/s on Intel's runtime (float32 181) and 16 on PoCL (141); one
    widening pass costs about as much as copying the input. GPUs convert
    halves in hardware as they load them.
    """
    return np.dtype(dtype) == np.float16 and bool(facts(device).type & cl.device_type.CPU)


def kernel_dilation(args: TransposeArgs,
                    forward_filters: bool = False) -> tuple[int, int, int, int] | None:
    """``(rate_h, crop_top, rate_w, crop_left)`` the transpose kernel is built with.

    The problem's rate and crop pads, or, for a rate so large that a tap
    could land outside the image and past 64-bit arithmetic, the small
    equivalent of :func:`atrous_cl.geometry.equivalent_dilation` (output
    pixel ``p`` reads input ``p + crop - a * rate``, so the offsets that reach
    an input lie in ``[-(H - 1), OH - 1]``). None when no tap lands inside
    ``value`` along an axis: the output is an empty sum; but not for the
    forward conv (``forward_filters``), whose taps outside ``value`` read TF's
    zero padding and add ``0 * w``, NaN for an Inf or NaN weight
    (``padding_reads`` of :func:`atrous_cl.geometry.kernel_dilations`). Needs
    non-empty images.
    """
    return geometry.kernel_dilations(args.filters_shape[:2], args.rate, args.pads,
                                     args.output_shape[1:3], args.value_shape[1:3],
                                     padding_reads=forward_filters)


def dilation_options(rate_h: int, crop_top: int, rate_w: int, crop_left: int) -> tuple[str, ...]:
    """The kernels' per-axis rate and crop pads, as long literals (see the kernel files)."""
    return (f"-DRATE_H={rate_h}L", f"-DRATE_W={rate_w}L", f"-DPAD_TOP={crop_top}L",
            f"-DPAD_LEFT={crop_left}L")


def build_options(dtype: np.dtype, args: TransposeArgs, tile: Tile,
                  forward_filters: bool = False, wide: bool = False,
                  blocked: bool = True) -> tuple[str, ...]:
    """``-D`` options specialising the kernel for a dtype, a problem and a tile.

    Channel counts, kernel size, rate and pads are baked in so the compiler can
    unroll; spatial sizes stay run-time arguments, so one build serves every
    image size. ``forward_filters``: see :func:`transpose`; ``wide``:
    :func:`widens_inputs`; ``blocked``: :func:`blocks_weights`. The problem must have a
    live tap (:func:`kernel_dilation`).
    """
    kh, kw, cout, cin = args.filters_shape
    return TYPE_OPTIONS[np.dtype(dtype).type] + (f"-DBW={tile.pixels}", f"-DBC={tile.channels}",
                    f"-DCIN={cin}", f"-DCOUT={cout}", f"-DCOUTP={tile.padded_channels(cout)}",
                    f"-DKH={kh}", f"-DKW={kw}") + \
        dilation_options(*kernel_dilation(args, forward_filters)) + \
        (("-DFORWARD_FILTERS",) if forward_filters else ()) + (("-DWIDE_INPUTS",) if wide else ()) + \
        ((f"-DOV={tile.vectors}",) if tile.vectors > 1 else ()) + \
        ((f"-DWB={tile.channels * tile.vectors}",) if blocked else ())


def winograd_options(dtype: np.dtype, args: TransposeArgs, tile: Tile, split: WinogradSplit,
                     forward_filters: bool = False, *, repack_run: int) -> tuple[str, ...]:
    """``-D`` options of the Winograd kernel file, as :func:`build_options` for the direct
    one; float16 is never widened for it (:func:`_winograd_plan`). A work-group takes
    ``split.chunk`` input channels at a time and computes ``split.group`` output channels
    (:func:`atrous_cl.tiles.winograd_split`); a work-item of ``repack_filters``
    ``repack_run`` input channels (:func:`winograd_repack_run`)."""
    kh, kw, cout, cin = args.filters_shape
    dilation = kernel_dilation(args, forward_filters)
    # The taps that land inside value for some output pixel: repack_filters
    # leaves the others out of the transform, where a large weight would cost
    # every output of its 3x3 part its low digits though it adds no term (or
    # only 0 * w) to any of them.
    live = geometry.kernel_live_taps((kh, kw), dilation, args.output_shape[1:3],
                                     args.value_shape[1:3])
    return TYPE_OPTIONS[np.dtype(dtype).type] + (
        f"-DLIVE_A0={live[0]}", f"-DLIVE_A1={live[1]}", f"-DLIVE_B0={live[2]}",
        f"-DLIVE_B1={live[3]}",
        f"-DTB={tile.pixels}", f"-DBC={tile.channels}", f"-DGV={tile.vectors}",
        f"-DKH={kh}", f"-DKW={kw}", f"-DSH={-(-kh // 3)}", f"-DSW={-(-kw // 3)}",
        f"-DCIN={cin}", f"-DCINP={-(-cin // tile.channels) * tile.channels}", f"-DCOUT={cout}",
        f"-DCOUTP={tile.padded_channels(cout)}",
        f"-DCC={split.chunk}", f"-DCOUT_GROUP={split.group}", f"-DRB={repack_run}") + \
        dilation_options(*dilation) + \
        (("-DFORWARD_FILTERS",) if forward_filters else ())


def winograd_geometry(output_shape: tuple[int, int, int, int], tile: Tile, rate_h: int,
                      rate_w: int, cout_groups: int = 1) -> tuple[tuple[int, int, int],
                                                                   tuple[int, int, int]]:
    """``(global_size, local_size)`` of ``winograd_transpose``: one work-item per work-group,
    each ``tile.pixels`` 2x2 blocks along a row of one phase, for one of ``cout_groups``
    groups of output channels (:func:`atrous_cl.tiles.winograd_cout_group`).

    Axis 1 covers the phases of a row (``min(rate_w, OW)``) times their groups of
    blocks, axis 2 the groups of output channels times the images times the phases of
    a column times its rows of blocks (each phase as many as phase 0, which has the
    most), the groups slowest: the work-groups that read one group's transformed
    filters run one after another, while those stay in the cache.
    """
    n, oh, ow, _ = output_shape
    return ((1, min(rate_w, ow) * -(-geometry.phase_blocks(ow, rate_w) // tile.pixels),
             cout_groups * n * min(rate_h, oh) * geometry.phase_blocks(oh, rate_h)), (1, 1, 1))


#: The most bytes of private memory a work-item of the Winograd file's
#: ``repack_filters`` keeps its rows and loads in, on CPUs
#: (:func:`winograd_repack_run`): 16 input channels of 3x3 filters and 24 output
#: channels in float32 take 42 KiB. GPUs keep such arrays in slower memory than
#: registers: an eighth there.
REPACK_PRIVATE_BYTES = 48 << 10


def winograd_repack_run(filters_shape: tuple[int, int, int, int], tile: Tile, dtype,
                        cpu: bool) -> int:
    """Input channels a work-item of the Winograd file's ``repack_filters`` transforms (its
    ``RB``): 16, 8, 4 or 2, the most whose rows (16 per 3x3 part, then one per tap, each
    of ``RB`` input channels and a block of output channels) and loaded weights (per tap,
    ``RB`` input channels of a vector of output channels) fit in
    :data:`REPACK_PRIVATE_BYTES` (an eighth of it on other devices than CPUs), and no
    more than the input channels need; else 1, a work-item that writes each vector as it
    computes it (large filters: 15x15 would keep 131 KiB)."""
    kh, kw, _, cin = filters_shape
    rows = 16 * -(-kh // 3) * -(-kw // 3) + kh * kw
    budget = REPACK_PRIVATE_BYTES if cpu else REPACK_PRIVATE_BYTES // 8
    per_channel = (rows * tile.vectors + kh * kw) * tile.channels * acc_itemsize(dtype)
    for run in (16, 8, 4, 2):
        if run // 2 < cin and run * per_channel <= budget:
            return run
    return 1


def winograd_repack_geometry(filters_shape: tuple[int, int, int, int], tile: Tile,
                             repack_run: int, cpu: bool) -> tuple[tuple[int, int],
                                                                  tuple[int, int] | None]:
    """``(global_size, local_size)`` of the Winograd file's ``repack_filters``: a work-item
    per run of ``repack_run`` input channels (axis 0) and block of ``tile.channels *
    tile.vectors`` output channels (axis 1). On CPUs one work-item a work-group, so that
    a group's private memory is one work-item's (up to :data:`REPACK_PRIVATE_BYTES`), not
    that times a group size of the runtime's choosing (Intel's runtime allows 8192 for
    this kernel): with its own choice, one benchmark run on Intel's runtime ended in a
    segmentation fault that ten more did not repeat (2026-12-06)."""
    _, _, cout, cin = filters_shape
    return ((-(-cin // repack_run), tile.padded_channels(cout) // (tile.channels * tile.vectors)),
            (1, 1) if cpu else None)


def _sizes(args: TransposeArgs) -> tuple:
    """The main kernels' spatial arguments: value's height and width, the output's."""
    return tuple(np.int32(s) for s in (*args.value_shape[1:3], *args.output_shape[1:3]))


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` (>= 1) that is at most ``at_most`` (>= 1)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return max(d for d in small + [n // d for d in small] if d <= at_most)


def pixels_geometry(output_shape: tuple[int, int, int, int], vector: int,
                    intel_cpu: bool) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """``(global_size, local_size)`` of the one-channel kernel: a work-item per ``vector``
    pixels of a row (axis 0) and output row (axis 1).

    Intel's CPU runtime gets groups of about 32 work-items, a row's vectors
    times a few rows: F (128x128) ran its kernel in 22-26 us so, against
    43-53 us with the driver's groups or 128-item ones (2-core EPYC, loaded).
    """
    n, oh, ow, _ = output_shape
    global_size = (-(-ow // vector), n * oh)
    if not intel_cpu:
        return global_size, None
    along_row = largest_divisor(global_size[0], 32)
    return global_size, (along_row, largest_divisor(global_size[1], max(1, 32 // along_row)))


def launch_geometry(output_shape: tuple[int, int, int, int], tile: Tile, rate_w: int,
                    max_group: int | None = None) -> tuple[tuple[int, int, int], tuple | None]:
    """``(global_size, local_size)`` of the main kernel: one work-item per register tile.

    Axis 0 covers output channels in tiles; axis 1 the tiles of each output
    row, ``tile.pixels`` columns ``rate_w`` (the kernel's, :func:`kernel_dilation`)
    apart, for each of the ``min(rate_w, OW)`` phases; axis 2 the ``N * OH``
    output rows. With ``max_group`` (Intel's CPU runtime: see :func:`plan`), a
    work-group is one channel tile of one output row's tiles, or as many of them
    as divide the row and fit ``max_group`` work-items, times a few rows where
    rows are short; else the local size is left to the driver.

    One channel tile a group: a core then runs tile after tile on the same
    weights, where a group of every channel tile swept all the filters between
    two uses of a tile's (18 MiB for 2048->256 3x3, past L2 and most of L3).
    Host API, this against the commit before, Intel's runtime (``python
    benchmarks/compare_installs.py ... --shapes ... --rounds 7 --calls 2 --device
    1:0``, 2026-12-06): 1x33x33 2048->256 rate 6 0.74, rate 12 0.86, 1024->1024
    rate 6 0.41; 1x65x65 1024->256 rate 12 0.98, 1x33x33 512->256 1.02, 1x64x64
    1024->256 rate 2 0.99, 1x64x64 256->256 rate 1 1.00; A-F (``--workloads``,
    9 rounds of 5 calls) 0.93-1.03, and C 1.17, though it runs the Winograd kernel,
    which this leaves alone: the machine's noise.
    """
    n, oh, ow, cout = output_shape
    phases = min(rate_w, ow)
    per_phase = -(-ow // rate_w)  # columns of phase 0, the most any phase has
    global_size = (tile.padded_channels(cout) // (tile.channels * tile.vectors),
                   phases * -(-per_phase // tile.pixels), n * oh)
    _, row_tiles, rows = global_size
    if max_group is None:
        return global_size, None

    along_row = largest_divisor(row_tiles, max_group)
    # Rows of few tiles go several to a group, up to about 128 work-items,
    # keeping 16 groups or more: E 0.105 -> 0.097 ms, F 0.073 -> 0.065
    # (benchmarks/kernel_ab.py 2:0 ACEF new:8x16::L=64.64.1 new:8x16::L=64.64.16).
    down = largest_divisor(rows, min(max(1, 128 // along_row), max_group // along_row,
                                      max(1, rows // 16)))
    return global_size, (1, along_row, down)


def repack_geometry(filters_shape: tuple[int, int, int, int], tile: Tile,
                    blocked: bool = True) -> tuple[tuple[int, int, int], None]:
    """``(global_size, local_size)`` of ``repack_filters``: one work-item per vector of
    ``tile.channels`` output channels (padded) and tap, each looping over the input
    channels; the vectors of a block of ``WB`` (:func:`build_options`' ``blocked``), then
    the blocks."""
    kh, kw, cout, cin = filters_shape
    padded = tile.padded_channels(cout)
    block = tile.channels * tile.vectors if blocked else padded
    return (block // tile.channels, padded // block, kh * kw), None


#: Host filters up to this size whose bytes equal the last ones repacked on a
#: queue reuse the packed buffer instead of launching ``repack_filters``: the
#: copy and comparison (about 35 us per MiB) cost less than the repack (B's
#: 576 KiB: 0.3 ms on Intel's runtime, profiled). ``python
#: benchmarks/repack_reuse.py 2:0 1:0 --workloads A B --calls 220`` (host API,
#: back to back, the same filters every call against filters that change every
#: call, 2026-12-03 22:55 UTC): Intel A 0.772 against 0.956 ms, B 6.13 against
#: 6.88; Debian's PoCL 3.1 A 0.883 against 0.926, B 6.46 against 6.69 (E, when
#: the limit was 64 KiB: 0.120 against 0.150 and 0.145 against 0.172). Each
#: queue keeps a copy of the bytes and the packed buffer per problem, hence a
#: limit.
REUSE_BYTES = 1 << 20


def packed_elements(filters_shape: tuple[int, int, int, int], padded_cout: int,
                    winograd: bool = False) -> int:
    """Elements of ``repack_filters``' buffer: the packed weights, then a row per tap
    saying which are finite, and CIN zeros (the kernel's FINITE and ZEROS); for the
    Winograd kernel, 16 transformed taps per 3x3 part, then the weights (its DIRECT_AT)."""
    kh, kw, _, cin = filters_shape
    if winograd:
        return (16 * -(-kh // 3) * -(-kw // 3) + kh * kw) * cin * padded_cout
    return kh * kw * (cin + 1) * padded_cout + cin


def check_limits(args: TransposeArgs) -> None:
    """Dimensions travel to the kernel as 32-bit ints; offsets are 64-bit."""
    for what, shape in (("value", args.value_shape), ("filters", args.filters_shape),
                        ("output_shape", args.output_shape)):
        if max(shape) > _INT32_MAX:
            raise ValueError(f"{what} dimensions must be below 2**31, got {list(shape)}")
    if args.output_shape[0] * args.output_shape[1] > 2**63 - 1:
        raise ValueError(f"output_shape batch * height is too large: {list(args.output_shape)}")


def temporaries(device: cl.Device, dtype: np.dtype, args: TransposeArgs) -> dict[str, int]:
    """The buffers :func:`transpose` allocates besides its arrays, by name, in ``dtype``'s
    elements: widened (float16 -> float32) buffers count twice."""
    widened = 2 if widens_inputs(device, dtype) else 1
    padded = -(-args.filters_shape[2] // 32) * 32  # for the widest tile (16x2)
    packed = packed_elements(args.filters_shape, padded)
    if winograd_parts(*args.filters_shape[:2]) is not None:  # the default may be Winograd's
        packed = max(packed, packed_elements(args.filters_shape, padded, winograd=True))
    counts = {"the packed filters": widened * packed}
    if widened > 1:
        counts["the widened value"] = 2 * math.prod(args.value_shape)
    return counts


def element_offset(x: cl_array.Array) -> int:
    """Where a device array's first element lies in its buffer, in elements (the kernels' ``*_off``)."""
    return x.offset // x.dtype.itemsize


def _max_group(kernel: cl.Kernel, device: cl.Device) -> int | None:
    """The register-tile kernel's ``max_group`` (:func:`launch_geometry`): the largest
    work-group on Intel's CPU runtime, None (the driver's choice) elsewhere.

    Intel's CPU runtime, left to choose the work-groups of A, C and F (2048
    work-items each), ran them about as slowly as one core would; with a row
    per group (benchmarks/kernel_ab.py 2:0 ACDF new:8x16 new:8x16::L=64.64.1)
    A 5.06 -> 1.74 ms, C 1.92 -> 1.46, F 0.142 -> 0.096. PoCL: no gain.
    """
    if not is_intel_cpu(device):
        return None
    return min(kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, device),
               *device.max_work_item_sizes[:2])


class Plan(NamedTuple):
    """What launching the op takes besides its arrays, fixed by context, device,
    dtype, problem and tile: the kernels, their geometry and scalar arguments."""

    kernels: dict
    main_kernel: str  # its name in kernels
    lock: threading.Lock
    options: tuple[str, ...]
    wide: bool
    packed_nbytes: int
    repack: tuple
    main: tuple
    sizes: tuple  # value's height and width, the output's, as np.int32
    # Per queue, the host filters' bytes last repacked, their packed buffer and
    # its repack's event (see transpose); changed under lock.
    repacked: dict
    source: str = KERNEL_FILE  # the kernel file, for errors


@functools.lru_cache(maxsize=256)
def plan(context: cl.Context, device: cl.Device, dtype: np.dtype, args: TransposeArgs,
         tile: Tile, forward_filters: bool, wide: bool) -> Plan | None:
    """The :class:`Plan` of a launch, built (and its program compiled) once; None
    when no tap lands inside ``value`` (:func:`kernel_dilation`).

    Like pyopencl's own program caches, the entries keep their contexts alive.
    """
    dilation = kernel_dilation(args, forward_filters)
    if dilation is None:
        return None
    ow = args.output_shape[2]
    vector = pixel_vector(device, dtype, args.filters_shape)
    blocked = blocks_weights(device)
    if tile.winograd and vector is None:
        if winograd_runs(device, dtype, args, tile):
            return _winograd_plan(context, device, dtype, args, tile, forward_filters, dilation)
        tile = default_tile(device, dtype, args.filters_shape[2])
    if vector is not None:
        # One channel in and out: VW consecutive pixels per work-item, a
        # vector (atrous_conv2d_transpose_pixels).
        tile, main_kernel = Tile(vector, 1), "atrous_conv2d_transpose_pixels"
        options = (build_options(dtype, args, tile, forward_filters, wide, blocked)
                   + (f"-DVW={vector}",))
    elif consecutive_pixels(args, tile, dilation):
        tile = tile._replace(pixels=min(tile.pixels, ow))
        main_kernel = "atrous_conv2d_transpose_rows"
        options = (build_options(dtype, args, tile, forward_filters, wide, blocked)
                   + ("-DCONSECUTIVE",))
    else:
        # No wider than a phase's columns: E's 8-pixel images at rate 2 have 4,
        # and an 8-pixel tile would compute as many pixels for nothing.
        tile = tile._replace(pixels=min(tile.pixels, -(-ow // dilation[2])))
        main_kernel = "atrous_conv2d_transpose"
        options = build_options(dtype, args, tile, forward_filters, wide, blocked)
    kernels, lock = programs.get_kernels(context, KERNEL_FILE, options)
    itemsize = 4 if wide else np.dtype(dtype).itemsize
    if vector is not None:
        main = pixels_geometry(args.output_shape, vector, is_intel_cpu(device))
    else:  # tiles of consecutive columns are laid out as phase tiles at a rate of 1
        main = launch_geometry(args.output_shape, tile,
                               1 if main_kernel.endswith("_rows") else dilation[2],
                               _max_group(kernels[main_kernel], device))
    packed_nbytes = packed_elements(args.filters_shape, tile.padded_channels(args.filters_shape[2]))
    return Plan(kernels, main_kernel, lock, options, wide, packed_nbytes * itemsize,
                repack_geometry(args.filters_shape, tile, blocked), main, _sizes(args), {})


def blocks_weights(device: cl.Device) -> bool:
    """Whether the direct kernel's packed weights come in blocks of a work-item's output
    channels (``-DWB``, see the kernel file) rather than one row of every channel per tap
    and input channel: on CPUs, where a work-item then reads its weights in one run
    (1x64x64 256->256 rate 1 took 52 ms in one row, 28 in blocks, Intel's runtime); not
    on GPUs (Oclgrind, which says CPU and GPU, takes blocks), where neighbouring
    work-items, neighbouring channel tiles, load neighbouring weights of one row together."""
    return not gpu_only(device)


def winograd_runs(device: cl.Device, dtype, args: TransposeArgs, tile: Tile) -> bool:
    """Whether the Winograd kernel can run a problem with ``tile``: filters it splits
    (:func:`atrous_cl.tiles.winograd_parts`) and a work-group's local memory within the
    device's. A Winograd tile where it cannot (a tuning file from another machine) runs
    the direct kernel with :func:`atrous_cl.tiles.default_tile` instead."""
    kh, kw, _, _ = args.filters_shape
    return (winograd_parts(kh, kw) is not None
            and winograd_split(args.filters_shape, tile, np.dtype(dtype),
                               facts(device).local_mem) is not None)


def _winograd_plan(context: cl.Context, device: cl.Device, dtype: np.dtype, args: TransposeArgs,
                   tile: Tile, forward_filters: bool, dilation) -> Plan:
    """:func:`plan` for a Winograd tile: the same arguments, the Winograd kernel file; never
    widened (float16 is converted as the kernel loads it)."""
    cout = args.filters_shape[2]
    # No more blocks per group than a phase's row has (E: 2).
    tile = tile._replace(pixels=min(tile.pixels,
                                    geometry.phase_blocks(args.output_shape[2], dilation[2])))
    # float16 is loaded as stored: the input transform converts it (see the kernel file),
    # cheaper than widening value in a pass of its own first.
    split = winograd_split(args.filters_shape, tile, dtype, facts(device).local_mem, device)
    cpu = bool(facts(device).type & cl.device_type.CPU)
    run = winograd_repack_run(args.filters_shape, tile, dtype, cpu)
    options = winograd_options(dtype, args, tile, split, forward_filters, repack_run=run)
    kernels, lock = programs.get_kernels(context, WINOGRAD_FILE, options)
    packed = packed_elements(args.filters_shape, tile.padded_channels(cout), winograd=True)
    return Plan(kernels, "winograd_transpose", lock, options, False, packed * acc_itemsize(dtype),
                winograd_repack_geometry(args.filters_shape, tile, run, cpu),
                winograd_geometry(args.output_shape, tile, dilation[0], dilation[2],
                                  -(-tile.padded_channels(cout) // split.group)),
                _sizes(args), {}, WINOGRAD_FILE)


def transpose(queue: cl.CommandQueue, value: cl_array.Array, filters: cl_array.Array,
              out: cl_array.Array, args: TransposeArgs, tile: Tile,
              forward_filters: bool = False) -> cl.Event | None:
    """Run the op on device arrays with a register ``tile`` (:func:`atrous_cl.tuning.transpose`
    takes either kind :func:`atrous_cl.tuning.tile_for` gives).

    Follows pyopencl's array conventions, so it is right on any queue: the
    launches wait for the events of ``value`` and ``filters`` (their producers,
    on any queue of the context) and of ``out`` (its earlier users), each
    kernel waits for the one before it (out-of-order queues), and ``out``
    gets the last event, which is returned (None when nothing was enqueued).

    With ``forward_filters``, ``filters`` are laid out ``[kh, kw, in, out]`` and
    applied with flipped taps (``args.filters_shape`` still names them
    ``[kh, kw, out, in]``): the forward ``atrous_conv2d`` as
    :func:`forward_as_transpose` describes it.
    """
    p = launch_plan(queue.context, queue.device, out.dtype, args, tile, forward_filters)
    return _launch(p, queue, value, filters, out)


def launch_plan(context: cl.Context, device: cl.Device, dtype, args: TransposeArgs, tile: Tile,
                forward_filters: bool = False) -> Plan | None:
    """The :class:`Plan` of :func:`transpose` for one problem; None when the output
    is all zeros (an empty sum: no input, no input channels, or no tap landing
    inside value) or empty."""
    if 0 in args.value_shape + args.filters_shape + args.output_shape:
        return None
    return plan(context, device, np.dtype(dtype), args, tile, forward_filters,
                widens_inputs(device, dtype))


def launcher(p: Plan | None) -> Callable:
    """:func:`transpose` with its :class:`Plan` (:func:`launch_plan`) looked up once,
    ``launch(queue, value, filters, out)``: what a host call that repeats a problem
    (:mod:`atrous_cl.calls`) keeps, so each call runs only the launch itself."""
    return functools.partial(_launch, p)


_ZERO = np.int64(0)


def enqueue(kernel: cl.Kernel, queue: cl.CommandQueue, geometry: tuple, args: tuple,
            wait_for: list) -> cl.Event:
    """``kernel`` on ``queue`` with ``geometry`` (global and local size) and every one of
    its arguments: the kernel object serves every launch of its program (views at
    offsets, other image sizes, other queues), so none may be left from another.
    Call under the program's lock. set_args and the enqueue took 11 us where the
    kernel's ``__call__`` took 17.6 (E, Intel's runtime, ad hoc); a repeated host call
    (:func:`launch_packed`) then took 0.94 (E) and 0.93 (F) of its time
    (``python benchmarks/compare_installs.py``, 2026-12-04)."""
    kernel.set_args(*args)
    return cl.enqueue_nd_range_kernel(queue, kernel, *geometry, wait_for=wait_for)


def launch_packed(p: Plan, queue: cl.CommandQueue, value_data, filters_bytes: bytes,
                  out_data) -> cl.Event | None:
    """The main kernel alone, on host memory from its start (offsets 0), when
    ``filters_bytes`` are the host filters' bytes last repacked on ``queue`` for
    ``p`` (:data:`REUSE_BYTES`): what :func:`_launch` does for them, without the
    arrays' wrappers (:func:`atrous_cl.calls.transpose_host`). None, and nothing
    enqueued, when they are not: the caller then runs the whole launch, which
    repacks them. ``value_data`` and ``out_data``: buffers or SVM on the arrays.
    The returned event follows the repack's (out-of-order queues).
    """
    if p.wide:
        return None
    try:
        with p.lock:  # setting a kernel's arguments and enqueueing it must not interleave
            last = p.repacked.get(queue)
            if last is None or last[0] != filters_bytes:
                return None
            _, packed, repacked = last
            return enqueue(p.kernels[p.main_kernel], queue, p.main,
                           (value_data, _ZERO, packed, out_data, _ZERO, *p.sizes), [repacked])
    except cl.Error as e:
        raise DeviceError(f"launching {p.main_kernel} on {describe(queue.device)} "
                          f"failed: {e}", status=status_name(e), source=p.source,
                          options=p.options) from e


#: Elements each work-item of prelude.cl's ``widen`` converts (its WIDEN_BY).
WIDEN_BY = 8


def widen(kernels: dict, queue: cl.CommandQueue, x, wait) -> tuple:
    """``(buffer, event)``: ``x`` (float16) widened to float32 in a scratch buffer of its
    own by prelude.cl's ``widen``, from ``kernels`` of any kernel file, after ``wait``
    (:func:`widens_inputs`). The caller holds the program's lock."""
    data = memory.scratch(queue, x.size * 4)
    return data, enqueue(kernels["widen"], queue, ((-(-x.size // WIDEN_BY),), None),
                         (x.base_data, np.int64(element_offset(x)), data, np.int64(x.size)), wait)


def _launch(p: Plan | None, queue: cl.CommandQueue, value, filters, out) -> cl.Event | None:
    """:func:`transpose` with its plan (None: the output is all zeros)."""
    if out.size == 0:
        return None
    # The filters' events join only the repack's: the main kernel reads its packed
    # copy, and a memory.Upload has an event once its copy is enqueued.
    wait = [*value.events, *out.events]
    if p is None:
        return memory.fill(queue, out, 0, [*wait, *filters.events])
    kernels = p.kernels
    value_data, value_off = value.base_data, element_offset(value)
    raw = compared_bytes(filters)

    def repack(source, packed, wait_for):
        return enqueue(kernels["repack_filters"], queue, p.repack,
                       (source, np.int64(element_offset(filters)), packed), wait_for)

    try:
        with p.lock:  # setting a kernel's arguments and enqueueing it must not interleave
            packed, repacked = packed_filters(p.repacked, queue, filters, raw, p.packed_nbytes,
                                              repack)
            if p.wide:
                value_data, widened = widen(kernels, queue, value, wait)
                value_off = 0
            done = enqueue(kernels[p.main_kernel], queue, p.main,
                           (value_data, np.int64(value_off), packed, out.base_data,
                            np.int64(element_offset(out)), *p.sizes),
                           [repacked, widened] if p.wide else [repacked, *wait])
    except cl.Error as e:
        raise DeviceError(f"launching {p.main_kernel} on {describe(queue.device)} "
                          f"failed: {e}", status=status_name(e), source=p.source,
                          options=p.options) from e
    out.add_event(done)
    return done


def compared_bytes(filters) -> bytearray | None:
    """A copy of host filters' bytes, which a launch compares with the bytes last repacked
    on its queue and repacks from (:func:`packed_filters`): filters of the host path (a
    :class:`~atrous_cl.memory.HostArray`, or a :class:`~atrous_cl.memory.Upload` not yet
    copied) up to :data:`REUSE_BYTES`; None for others, which are repacked every launch.
    An Upload already copied (filters not lazy: none today) may hold other bytes. Taken
    before the launch's lock: the copy is the call's own work. (A bytearray: pyopencl's
    SVM wrapper takes only writeable memory.)"""
    if ((isinstance(filters, memory.HostArray)
         or isinstance(filters, memory.Upload) and not filters.copied)
            and filters.array.nbytes <= REUSE_BYTES):
        return bytearray(np.ascontiguousarray(filters.array))
    return None


def packed_filters(kept: dict, queue: cl.CommandQueue, filters, raw: bytearray | None,
                   nbytes: int, repack: Callable) -> tuple:
    """``(packed, event)``: the filters packed for a launch on ``queue``, and the event after
    which they are.

    Host filters whose bytes ``raw`` (:func:`compared_bytes`) equal the last ones
    repacked on ``queue`` reuse that packed buffer, kept in ``kept`` (a plan's, per
    queue); a :class:`~atrous_cl.memory.Upload` of them is then never copied to the
    device. Otherwise ``repack(source, packed, wait_for)`` enqueues the repack of
    ``source`` into a new buffer of ``nbytes`` (kept for host filters, from the pool
    else), so a kernel never reads one that another call is rewriting. The repack
    reads ``raw``, not the caller's array: packed filters are kept only under the
    bytes they were made from, even if the caller's array changes meanwhile. Call
    under the lock that guards ``kept`` and the repack kernel.
    """
    last = kept.get(queue) if raw is not None else None
    if last is not None and last[0] == raw:
        return last[1], last[2]
    packed = (cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, nbytes)
              if raw is not None else memory.scratch(queue, nbytes))
    # First: a memory.Upload's copy (of the bytes compared), made or enqueued here,
    # waits for nothing the caller holds back on another queue (value's or out's
    # producers, which widen waits for).
    if raw is not None:
        filters.copy_bytes(raw)
    event = repack(filters.base_data, packed, list(filters.events))
    if raw is not None:
        if len(kept) >= 8:
            kept.clear()
        kept[queue] = (raw, packed, event)
    return packed, event


def forward_as_transpose(args: ConvArgs) -> TransposeArgs:
    """The forward conv as a problem of the transpose kernel, which then runs it.

    ``out[p] = sum_a padded[p - top + a*rate] f[a]`` (TF's forward op, per
    axis) is the transpose kernel's ``out[p] = sum_a' value[p + top' -
    a'*rate] g[a']`` with the taps flipped, ``g[a'] = f[k - 1 - a']``, and the
    crop pad ``top' = (k - 1) * rate - top``. The filters keep their
    ``[kh, kw, in, out]`` layout: the kernel's repack reads them flipped
    (``forward_filters``), so the result's shape names them ``[kh, kw, out, in]``.
    """
    kh, kw, cin, cout = args.filters_shape
    eh, ew = (kh - 1) * args.rate, (kw - 1) * args.rate
    p = args.pads
    return TransposeArgs(args.value_shape, (kh, kw, cout, cin), args.output_shape, args.rate,
                         args.padding, geometry.Pads(eh - p.top, ew - p.left, eh - p.bottom,
                                                     ew - p.right))

