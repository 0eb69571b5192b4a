# SPDX-License-Identifier: Apache-2.0
"""The launch layer of ``kernels/atrous_conv2d.cl`` and
``kernels/atrous_conv2d_filter_grad_winograd.cl``: the filter gradient of both ops.

``out[a, b, c, o] = sum x[n, i - top + a*rate, j - left + b*rate, c] * d[n, i, j, o]``
for the forward conv from ``x`` to ``d``, in two stages without atomics:
``filter_grad_partial`` sums chunks of rows, ``filter_grad_sum`` adds the
chunks in a fixed order, so results are bit-identical from run to run. Its
split (:func:`atrous_cl.tiles.default_filter_grad_tile`) is not tuned. For 3x3
filters where it pays (:func:`winograd_layout`), Winograd's F(2x2, 3x3) read backwards
instead, also in a fixed order: two transforms, the 16 products summed in chunks of
tiles, and the chunks' sums transformed back (:func:`winograd_launch`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from atrous_cl import geometry, memory, programs
from atrous_cl import tiles as tiles_module
from atrous_cl.errors import DeviceError
from atrous_cl.facts import describe, facts, is_intel_cpu, is_pocl, status_name
from atrous_cl.launch import (TYPE_OPTIONS, dilation_options, element_offset, enqueue,
                              largest_divisor, widen, widens_inputs)
from atrous_cl.tiles import Tile, acc_itemsize, default_filter_grad_tile
from atrous_cl.validation import ConvArgs

#: The kernel file this layer launches.
KERNEL_FILE = "atrous_conv2d.cl"

#: Multiply-adds of a filter gradient from which :func:`layout` keeps the default's
#: packing of x (``xpack``).
PACK_FROM_MACS = 1 << 26

#: Partial sums (elements) a chunked filter gradient may always use; beyond
#: this, no more than its inputs take (:func:`layout`).
_PARTIALS_FLOOR = 1 << 20


@functools.lru_cache(maxsize=256)
def dilation(args: ConvArgs) -> tuple[int, int, int, int] | None:
    """``(rate_h, crop_top, rate_w, crop_left)`` the filter gradient is built with.
    Remembered per problem: a call asks for it up to six times (:func:`launch`,
    :func:`layout`, :func:`packed_width`, :func:`build_options`), about 3 us each.

    As :func:`atrous_cl.launch.kernel_dilation`, for the forward conv's reading
    ``x[i - top + a * rate]`` of output row ``i``: the offsets that reach ``x``
    lie in ``[-(HD - 1), HX - 1]``. Taps outside ``x`` read TF's zero padding,
    whose ``0 * d`` terms the kernel adds (NaN for an Inf or NaN in ``d``), so
    an axis where no tap lands gets one with every tap outside
    (``padding_reads``), not None.
    """
    return geometry.kernel_dilations(args.filters_shape[:2], args.rate, args.pads,
                                     args.value_shape[1:3], args.output_shape[1:3],
                                     padding_reads=True)


def build_options(dtype: np.dtype, args: ConvArgs, tile: Tile, gc: int,
                  ov: int = 1, kt: int = 1, wide: bool = False,
                  xpack: bool = False, cb: int = 1, one_chunk: bool = False,
                  dpack: bool = False) -> tuple[str, ...]:
    """``-D`` options for ``atrous_conv2d.cl``: dtype, problem and the filter gradient's tile.

    Its tile is ``kt`` taps of a filter row x ``gc`` input channels x ``ov``
    vectors of ``tile.channels`` output channels; ``wide``: float16 inputs
    widened first (:func:`atrous_cl.launch.widens_inputs`); ``one_chunk``: the
    rows in one chunk, whose sums the partial kernel stores as the result. The
    problem must have a live tap (:func:`dilation`).
    """
    kh, kw, cin, cout = args.filters_shape
    return TYPE_OPTIONS[np.dtype(dtype).type] + (
        f"-DBC={tile.channels}", f"-DOV={ov}", f"-DGC={gc}", f"-DKT={kt}", f"-DCB={cb}",
        f"-DCIN={cin}", f"-DCOUT={cout}", f"-DCOUTP={tile.padded_channels(cout)}",
        f"-DKH={kh}", f"-DKW={kw}") + dilation_options(*dilation(args)) + \
        (("-DWIDE_INPUTS",) if wide else ()) + (("-DXPACK",) if xpack else ()) + \
        (("-DDPACK",) if dpack else ()) + (("-DONE_CHUNK",) if one_chunk else ())


def tiles(device: cl.Device, dtype, filters_shape,
          packable: bool = False) -> tuple[Tile, int, int, int, int, int, bool, int]:
    """The filter gradient's split: ``(tile, gc, items, chunk_bytes, ov, kt, xpack, cb)``
    (:func:`atrous_cl.tiles.default_filter_grad_tile`; the filter gradient is not tuned).
    ``packable``: packing x would pay for the problem (:func:`layout`).
    """
    return tuple(default_filter_grad_tile(device, dtype, *filters_shape[2:], kw=filters_shape[1],
                                          packable=packable))


def row_chunks(rows: int, tiles_per_chunk: int, items: int = 4096,
               max_rows: int | None = None) -> tuple[int, int]:
    """``(chunks, rows_per_chunk)``: how the filter gradient splits its ``rows = N * OH`` rows.

    Enough chunks for about ``items`` work-items and for none to have more
    than ``max_rows`` rows, none empty (none at all without rows). The count
    depends on the shapes and the device alone, so results do not vary from
    run to run.
    """
    if rows == 0:
        return 0, 0
    chunks = -(-items // max(1, tiles_per_chunk))
    if max_rows is not None:
        chunks = max(chunks, -(-rows // max(1, max_rows)))
    chunks = max(1, min(rows, chunks))
    rows_per_chunk = -(-rows // chunks)
    return -(-rows // rows_per_chunk), rows_per_chunk


def launch_geometry(filters_shape, tile: Tile, gc: int, chunks: int,
                    ov: int = 1, kt: int = 1, cb: int = 1, max_items: int | None = None,
                    max_sizes: tuple[int, ...] = (), units: int = 1
                    ) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """``(global_size, local_size)`` of ``filter_grad_partial``: one work-item per tile and chunk.

    Axis 0 covers output channels in ``ov`` vectors of ``tile.channels``, axis 1
    input channels in groups of ``gc``, axis 2 the taps in groups of ``kt`` of a
    filter row (``kt`` divides its width) times the chunks. With ``max_items``
    (:func:`group_items`), work-groups of at most that many work-items (each axis at most
    its ``max_sizes`` entry), as many as divide axis 0, then 1, then 2, then split again
    until they keep ``units`` compute units busy (:func:`_balanced`) or are groups of
    one; else the local size is left to the driver.
    """
    kh, kw, cin, cout = filters_shape
    global_size = (_d_groups(tile, ov, cout), -(-cin // (gc * cb)), kh * (kw // kt) * chunks)
    if max_items is None:
        return global_size, None
    local: list[int] = []
    for axis, size in enumerate(global_size):
        room = max(1, max_items // math.prod(local))
        if axis < len(max_sizes):
            room = min(room, max(1, max_sizes[axis]))
        local.append(largest_divisor(size, room))
    while not _balanced(math.prod(g // item for g, item in zip(global_size, local)), units):
        axis = max(range(3), key=lambda i: local[i])
        if local[axis] == 1:
            break
        local[axis] = largest_divisor(global_size[axis], local[axis] - 1)
    return global_size, (local[0], local[1], local[2])


def _balanced(groups: int, units: int) -> bool:
    """Whether ``groups`` work-groups of equal work keep ``units`` compute units busy: 4 or
    more each, so that a last round with some units idle costs at most a fifth.

    PoCL's CPU driver runs a work-group on one thread: 3 groups on 2 cores took two
    groups' time. The filter gradient on PyPI's PoCL (a ``/tmp`` A/B of the default
    layout's groups split until there was one a core, then until there were 4, AMD Zen 4,
    2 cores, 2026-12-07 10:03 UTC, medians of 9), time with 4 a core over one: A (2 groups
    -> 12) 0.93, B (14) 0.94, C (3 -> 14) 0.81, D (2 -> 12) 0.87, E (2 -> 12) 0.95, 1x33x33
    256->256 rate 12 (3 -> 12) 0.73, 4x16x16 256->256 rate 1 (3 -> 12) 0.87, 5x5
    128->128 on 1x64x64 rate 2 (5 -> 10) 0.98, 1x33x33 512->512 rate 12 (12) 0.99. Just
    an even count (6 groups of the 3) ran the two 256-channel shapes 0.72 and 0.95, D (2)
    0.97; 6 a core instead of 4 gave the same figures within 0.1. Measured on 2 cores only:
    on many, small problems split into groups of one work-item, which ran B 1.8x slower on
    PyPI's PoCL (:func:`group_items`).
    """
    return groups >= 4 * units


#: Bytes of the work-items' private register tiles a work-group of PoCL's CPU driver may
#: hold (:func:`group_items`).
POCL_GROUP_BYTES = 1 << 20


def group_items(device: cl.Device, dtype, tile: Tile, gc: int, ov: int, kt: int,
                cb: int) -> int | None:
    """The most work-items a work-group of ``filter_grad_partial`` takes; None: the driver's
    choice (GPUs).

    PoCL's CPU driver runs a work-group on one thread, whose stack holds every work-item's
    private arrays: the tiles of ``cb`` groups of input channels (4 KiB a work-item with
    x packed, 16 groups of 8 input channels of 8-float vectors) in the 64x4x9 group PyPI's
    PoCL 3.0 chose for the transpose vjp of 1x8x8 1024->512 took 9 MiB and crashed the
    process ("stack smashing detected"; a segmentation fault at 1x32x32). Its groups
    therefore hold at most :data:`POCL_GROUP_BYTES` of tiles (256 work-items there), within
    the kernel's and the device's largest group, split until there are 4 a compute unit
    (:func:`group_limits`, :func:`_balanced`; one a unit in these figures). The transpose
    vjp on PyPI's PoCL, host API, medians of 5, two runs each (a ``/tmp`` script,
    2026-12-07, the driver's groups / these), ms: A 6.6, 5.6 /
    5.2, 6.9; B 35.1, 26.9 / 36.6, 29.1; C 2.8, 2.6 / 4.4, 2.7; D 11.2, 13.8 / 13.4, 9.9; E
    0.5 / 0.5; 1x33x33 1024->256 rate 6 85.0, 74.3 / 143, 76.4: the machine's noise.

    On Intel's CPU runtime, work-groups of one work-item: the groups it chose took whole
    rows of output-channel tiles and, from 1024 output channels (d's: the transpose's input
    channels, in its vjp), ran a register tile of several vectors 5-17x slower (the runtime
    maps neighbouring work-items of a group to vector lanes). AMD Zen 4, the transpose vjp,
    host API, medians of 3 (a ``/tmp`` script, 2026-12-07), ms, the driver's groups /
    groups of one / groups along the input channels: 1x33x33 1024->256 rate 6 672 / 77.9 /
    75.4; 768->256 53.3 / 51.8 / 57.7; 1x32x32 1024->512 rate 1 1363 / 140 / 128; 1x64x64
    512->512 rate 2 446 / 386 / 467; A 2.7 / 2.5 / 2.3, B 21.2 / 21.1 / 20.0, C 1.6 / 1.4 /
    1.6, D 8.9 / 8.6 / 8.5, E 0.2 all; 1x33x33 256->256 rate 12 18.5 / 17.1 / 18.8.
    (Groups of one took Debian's PoCL 3.1 A 2.6 -> 4.9 ms and PyPI's PoCL B 27.3 -> 48.6.)
    """
    if is_intel_cpu(device):
        return 1
    if is_pocl(device) and facts(device).type & cl.device_type.CPU:
        private = cb * kt * gc * ov * tile.channels * acc_itemsize(dtype)
        return max(1, POCL_GROUP_BYTES // private)
    return None


def group_limits(kernel: cl.Kernel, device: cl.Device, dtype, tile: Tile, gc: int, ov: int,
                 kt: int, cb: int) -> tuple[int | None, tuple[int, ...], int]:
    """:func:`launch_geometry`'s ``max_items``, ``max_sizes`` and ``units`` for
    ``kernel`` on ``device``: :func:`group_items` within the kernel's and the device's
    largest work-group, and the compute units to share the groups out over (the
    device's limits from :func:`atrous_cl.facts.facts`, read once)."""
    items = group_items(device, dtype, tile, gc, ov, kt, cb)
    if items is None:
        return None, (), 1
    f = facts(device)
    return (max(1, min(items, _largest_group(kernel, device))), f.max_item_sizes,
            max(1, f.compute_units))


def _largest_group(kernel: cl.Kernel, device: cl.Device) -> int:
    """The most work-items a work-group of ``kernel`` may have on ``device``: the kernel's
    and the device's limit (:func:`atrous_cl.facts.facts`)."""
    largest = kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, device)
    return min(largest, facts(device).max_group or largest)


def _device_error(queue: cl.CommandQueue, what: str, e: cl.Error, options) -> DeviceError:
    return DeviceError(f"launching {what} on {describe(queue.device)} failed: {e}",
                       status=status_name(e), source=KERNEL_FILE, options=options)


class Layout(NamedTuple):
    """How the filter gradient runs a problem: its tile (``kt`` taps of a filter row x
    ``gc`` input x ``ov`` vectors of ``tile.channels`` output channels), how it splits
    the rows, and how many partial sums it keeps, in the dtype's elements (float16
    keeps them in float32, which counts twice); ``xpack``: x packed by groups of ``gc``
    input channels first (:func:`packed_x_elements`); ``cb``: with x packed, groups of
    ``gc`` input channels a work-item takes in turn on each row of d; ``dpack``: d packed
    by each work-item's output channels first (:func:`packed_d_elements`)."""

    tile: Tile
    gc: int
    chunks: int
    rows_per_chunk: int
    partials: int
    ov: int = 1
    kt: int = 1
    xpack: bool = False
    cb: int = 1
    dpack: bool = False


#: Input x output channels from which :func:`layout` gives Intel's CPU runtime one vector
#: and 16 input channels a work-item (16x16x1x1) instead of :func:`tiles`' four vectors and
#: 4 (16x4x4x1) where the rows run in one chunk (filters whose partial sums would outgrow
#: the inputs). Each work-item then sums every row, and d's rows stream through the caches
#: once per work-item: one 16-channel vector of d a load, 16 of x's channels reusing it.
#: AMD Zen 4, in work-groups of one work-item (:func:`group_items`), kernels only, time over
#: the best of 16x4x4x1 / 16x8x1x1 / 16x16x1x1 / 16x8x4x1 (``python
#: benchmarks/filter_grad_ab.py --devices 2:0 --shapes ... --bc 16 --gc 4 8 16 --ov 1 4
#: --items 1 --kib 512 --rounds 2-3``, 2026-12-07 01:14-01:18 UTC), one chunk: 1x33x33
#: 256->256 rate 12 1.89 / 1.00 / 1.15 / 1.68, 512->512 rate 6 1.65 / 1.00 / 1.11 / 1.45,
#: 512->256 2.03 / 1.06 / 1.00 / 1.85, 256->512 1.98 / 1.00 / 1.04 / 1.63, 2048->256 rate 12
#: 1.79 / 1.26 / 1.00 / 1.42, 1x64x64 512->512 rate 2 2.09 / 1.23 / 1.00 / 1.17; in several
#: chunks, where 16x4x4x1 stays: A 1.00 / 1.11 / 1.27 / 1.06, B 1.06 / 1.00 / 1.54 / 1.02,
#: 1x64x64 256->256 rate 2 (3 chunks) 1.05 / 1.04 / 1.25 / 1.00, 1x65x65 2048->256 rate 6
#: (2 chunks) 1.46 / 2.59 / 1.26 / 1.00. Sixteen accumulator vectors either way. Since,
#: filters whose width 3 divides take three taps a row there (16x8x1x3, faster on all of
#: these: :func:`atrous_cl.tiles.default_filter_grad_tile`), so this rule is for the others.
INTEL_ONE_CHUNK_ONE_VECTOR_FROM = 256 * 256


#: Bytes of a pixel of d, as the kernel reads it (float16 widened to float32 on CPUs), from
#: which :func:`layout` packs d (``dpack``) on PoCL's CPU device ... The pixels of a row, a
#: work-item's 16 output channels each, lie that far apart (8 KiB at 2048 float32
#: channels): each in a page of its own from 4 KiB, where the prefetchers stop, and in the
#: same few sets of L1, which therefore holds few of the row's pixels for the other channel
#: groups a work-item takes in turn on it (``cb``; with 8 KiB, ``perf annotate`` put 31% of
#: the kernel's samples on one load of d). The filter gradient's kernels with d packed over
#: those without (``python /tmp`` A/B of one plan both ways, transpose vjp, AMD Zen 4,
#: 2026-12-07 09:55-10:05 UTC, medians of 5-11 interleaved), PyPI's PoCL, by d's pixel:
#: 256 B (A) 1.06; 512 B (B, 5x5 128->128 on 1x64x64 rate 2, float64's A) 0.94-0.98; 1 KiB
#: 0.83-0.93 float32 (1x33x33 256->256 rate 12, 4x16x16 256->256 rate 1, 1x33x33
#: 256->2048 rate 12), float64 0.84-0.95, float16 0.94-0.99; 2 KiB and
#: more 0.63-0.89 (1x64x64 512->512 rate 2 0.70, 1x33x33 2048->256 rate 12 0.73-0.76,
#: 1x65x65 2048->256 rate 6 0.66). Debian's PoCL 3.1 (512-bit vectors, 16x4x4 tiles, whose
#: work-items read 64 channels a pixel), 10:55-11:00 UTC: C, D and E 0.99-1.26; 1 KiB and
#: more 0.89-0.97 (1x33x33 rate 12 256->256 0.94, 512->512 0.89, 1024->512 0.94,
#: 2048->256 0.97; 1x65x65 256->256 rate 24 0.97); float64 0.94-0.98 from 1 KiB (B, 5x5
#: 128->128 rate 2, the 256 and 512 shapes), float16 0.90-0.99 ...
DPACK_FROM_BYTES = 1 << 10

#: ... and on Intel's CPU runtime, whose work-items take one channel group (no row to reuse
#: from L1): 512 B 0.77-1.06, 1 KiB float32 0.91-1.06 (1x33x33 256->256 rate 12 1.06),
#: float64 0.88-0.97, float16 0.97-1.03; 2 KiB 0.88-0.99; 4 KiB 0.72-0.96; 8 KiB 0.43-0.78
#: (1x33x33 2048->256 rate 12: float32 0.72, float64 0.43).
DPACK_INTEL_FROM_BYTES = 2 << 10


def read_itemsize(device: cl.Device, dtype) -> int:
    """Bytes of an element of x or d as the kernel reads it: float32 for float16 widened
    first (:func:`atrous_cl.launch.widens_inputs`), else the dtype's."""
    return 4 if widens_inputs(device, dtype) else np.dtype(dtype).itemsize


def packs_d(device: cl.Device, dtype, cout: int) -> bool:
    """Whether :func:`layout` packs d (``pack_d``) for ``cout`` of its channels on
    ``device``, a problem of :data:`PACK_FROM_MACS` multiply-adds or more: on the CPUs
    where it was measured to pay (:data:`DPACK_FROM_BYTES`,
    :data:`DPACK_INTEL_FROM_BYTES`); not on GPUs, whose neighbouring work-items read
    neighbouring channels of one pixel (unmeasured)."""
    itemsize = read_itemsize(device, dtype)
    if is_intel_cpu(device):
        return cout * itemsize >= DPACK_INTEL_FROM_BYTES
    return (is_pocl(device) and bool(facts(device).type & cl.device_type.CPU)
            and cout * itemsize >= DPACK_FROM_BYTES)


def layout(device: cl.Device, dtype: np.dtype, args: ConvArgs, tile: Tile | None = None,
           gc: int | None = None, items: int | None = None,
           chunk_bytes: int | None = None, ov: int | None = None,
           kt: int | None = None, xpack: bool | None = None, cb: int | None = None,
           dpack: bool | None = None) -> Layout:
    """The :class:`Layout` of ``args`` on ``device`` for ``dtype``.

    ``tile``, ``gc``, ``items``, ``chunk_bytes``, ``ov``, ``kt``, ``xpack``, ``cb`` and
    ``dpack`` each replace the default's choice (for benchmarks and tests); ``chunk_bytes``
    0: chunks of any size. :func:`tiles` may pack x (``xpack``) where the packed rows
    (:func:`packed_width`) are at most twice as wide as x's (a large rate on a narrow
    image would otherwise pack mostly zeros) and there are :data:`PACK_FROM_MACS`
    multiply-adds or more (the packing pass and its launch cost more than they
    save below: 2x32x32 48->32 with 2x2 taps lost 1.22-1.27x, 12.6M of them);
    d is packed (``dpack``) from as many where :func:`packs_d`.

    Raises:
        ValueError: ``kt`` does not divide the filters' width, or ``cb`` is below 1
            or above 1 without x packed.
    """
    kh, kw, cin, cout = args.filters_shape
    live = dilation(args) is not None
    large = math.prod(args.output_shape[:3]) * kh * kw * cin * cout >= PACK_FROM_MACS
    packable = live and large and packed_width(args) <= 2 * args.value_shape[2]
    if dpack is None:
        dpack = large and packs_d(device, dtype, cout)
    dpack = live and bool(dpack)
    explicit_cb = cb is not None
    by_hand = any(given is not None
                  for given in (tile, gc, items, chunk_bytes, ov, kt, xpack, cb))
    chosen = [d if given is None else given for given, d in
              zip((tile, gc, items, chunk_bytes, ov, kt, xpack, cb),
                  tiles(device, dtype, args.filters_shape, packable))]
    tile, gc, items, chunk_bytes, ov, kt, xpack, cb = chosen
    xpack = live and bool(xpack)
    if kt < 1 or kw % kt:
        raise ValueError(f"kt must divide the filters' width {kw}; got {kt}")
    if not xpack and (not explicit_cb or not live):
        cb = 1  # the groups are for x packed (dropped, as xpack, where no tap lands)
    _check_groups(cb, xpack)
    n, hd, wd = args.output_shape[:3]
    # A row of d and one of x, the data a chunk's row brings into the caches.
    row_bytes = (wd * cout + args.value_shape[2] * cin) * read_itemsize(device, dtype)
    geometry_one = launch_geometry(args.filters_shape, tile, gc, 1, ov, kt, cb)[0]
    max_rows = chunk_bytes // max(1, row_bytes) if chunk_bytes else None
    if max_rows is not None:
        # Each chunk holds a partial sum of the whole filter gradient: rows
        # wider than chunk_bytes (a large image) would otherwise make a chunk
        # per row, and partial sums far larger than the inputs. Bound them by
        # the inputs' size (or _PARTIALS_FLOOR elements, which small problems
        # may always use).
        per_chunk = kh * kw * cin * tile.padded_channels(cout)
        budget = max(_PARTIALS_FLOOR, math.prod(args.value_shape) + math.prod(args.output_shape))
        max_rows = max(max_rows, -(-(n * hd) // max(1, budget // max(1, per_chunk))))
    chunks, rows_per_chunk = row_chunks(n * hd, math.prod(geometry_one), items, max_rows)
    if (chunks == 1 and ov > 1 and not by_hand and is_intel_cpu(device)
            and cin * cout >= INTEL_ONE_CHUNK_ONE_VECTOR_FROM):
        ov, gc = 1, min(16, cin)
    widened = 2 if np.dtype(dtype) == np.float16 else 1
    # One chunk keeps no partial sums: the partial kernel stores the result (launch).
    partials = widened * chunks * kh * kw * cin * tile.padded_channels(cout) if chunks > 1 else 0
    return Layout(tile, gc, chunks, rows_per_chunk, partials, ov, kt, xpack, cb, dpack)


def _check_groups(cb: int, xpack: bool) -> None:
    """ValueError unless ``cb`` (channel groups a work-item takes in turn) is 1, or more
    with x packed: the kernel reads each group's own packed rows."""
    if cb < 1 or (cb > 1 and not xpack):
        raise ValueError(f"cb must be 1, or more with x packed; got {cb} (xpack {xpack})")


def packed_width(args: ConvArgs) -> int:
    """Columns of a row of ``pack_x``'s copy of x: every column of x a tap reads, TF's
    zeros outside x (d's width plus the dilated kernel's). The problem must have a live
    tap (:func:`dilation`)."""
    return args.output_shape[2] + (args.filters_shape[1] - 1) * dilation(args)[2]


def packed_x_elements(args: ConvArgs, gc: int) -> int:
    """Elements of ``pack_x``'s copy of x: rows of :func:`packed_width` columns, input
    channels padded to a multiple of ``gc``."""
    n, hx, _, cin = args.value_shape
    return n * hx * packed_width(args) * -(-cin // gc) * gc


def _pack_x(kernels: dict, queue: cl.CommandQueue, x: cl_array.Array, args: ConvArgs, gc: int,
            wide: bool, wait) -> tuple:
    """``(buffer, event)``: ``x`` in ``pack_x``'s layout (``gc`` input channels of a pixel
    next to the next pixel's, rows of :func:`packed_width`; widened to float32 with
    ``wide``), after ``wait``. The caller holds the program's lock."""
    n, hx, wx, _ = x.shape
    data = memory.scratch(queue, packed_x_elements(args, gc) * (4 if wide else x.dtype.itemsize))
    return data, enqueue(kernels["pack_x"], queue, ((packed_width(args), n * hx), None),
                         (x.base_data, np.int64(element_offset(x)), data, np.int32(wx),
                          np.int32(args.output_shape[2])), wait)


def _d_groups(tile: Tile, ov: int, cout: int) -> int:
    """Groups of ``ov`` vectors of ``tile.channels`` output channels that cover ``cout``
    (axis 0 of ``filter_grad_partial``; ``pack_d``'s groups)."""
    return -(-tile.padded_channels(cout) // (tile.channels * ov))


def packed_d_elements(args: ConvArgs, tile: Tile, ov: int) -> int:
    """Elements of ``pack_d``'s copy of d: its output channels padded to whole groups of
    ``ov`` vectors of ``tile.channels``."""
    n, hd, wd, cout = args.output_shape
    return n * hd * wd * _d_groups(tile, ov, cout) * tile.channels * ov


def _pack_d(kernels: dict, queue: cl.CommandQueue, d: cl_array.Array, args: ConvArgs,
            tile: Tile, ov: int, wide: bool, wait) -> tuple:
    """``(buffer, event)``: ``d`` in ``pack_d``'s layout (each work-item's ``ov`` vectors of
    ``tile.channels`` output channels of a pixel next to the next pixel's, zeros past its
    channels; widened to float32 with ``wide``), after ``wait``. The caller holds the
    program's lock."""
    n, hd, wd, cout = d.shape
    data = memory.scratch(queue, packed_d_elements(args, tile, ov)
                          * (4 if wide else d.dtype.itemsize))
    return data, enqueue(kernels["pack_d"], queue, ((_d_groups(tile, ov, cout), wd, n * hd), None),
                         (d.base_data, np.int64(element_offset(d)), data, np.int32(wd)), wait)


#: The Winograd filter gradient's kernels (3x3 filters).
WINOGRAD_FILE = "atrous_conv2d_filter_grad_winograd.cl"

#: The Winograd filter gradient runs where its multiplies (16 per tile of 2x2 pixels of
#: d, every phase's tiles counted as phase 0's) are at most this share of the direct
#: kernel's (9 per pixel of d; 0.44 where the tiles fill the phases): 1x33x33 256->256
#: rate 12 SAME (0.85) took it 1.17x the direct kernel's time, rate 6 (0.57) 0.68 ...
WINOGRAD_BELOW = 0.6

#: ... the problem has at least this many of the direct kernel's multiply-adds ...
WINOGRAD_FROM_MACS = 1 << 24

#: ... and at least this many pairs of an input and an output channel: the transforms'
#: traffic per multiply-add grows as the channels shrink. Input x output channels of the
#: forward conv: 16x16 on 1x256x256 took 2.35x the direct kernel's time, 16x32 on
#: 1x128x128 (C's) 1.20; 16x64 on 1x64x64 0.66, 32x32 on 1x96x96 0.93 ...
WINOGRAD_FROM_CHANNEL_PAIRS = 1024

#: ... or on Intel's CPU runtime, whose direct kernel is the faster below, this many: input x
#: output channels of the forward conv (kernels only, AMD Zen 4, 512-bit vectors), the
#: Winograd kernels' time over the direct one's: 256x2048 on 1x65x65 rate 6 0.58, 512x512
#: on 1x64x64 rate 2 0.41, 512x1024 on 1x32x32 rate 1 0.70; 256x256 on 4x16x16 rate 1
#: 0.91, on 1x64x64 rate 2 1.05, on 1x33x33 rate 6 1.22; 128x128 on 8x32x32 rate 2 (B's)
#: 1.03-1.14, 256x128 1.61 ...
WINOGRAD_INTEL_FROM_CHANNEL_PAIRS = 512 * 512

#: ... or on PoCL with 512-bit vectors (Debian's PoCL 3.1), this many: the Winograd kernels'
#: time over the direct default's (which packs x from 128 channels), float32, kernels only,
#: AMD Zen 4 (``python benchmarks/filter_grad_ab.py --devices 1:0 --workloads A B C E --shapes
#: ... --bc 8 --gc 100000 --winograd --rounds 7``, 2026-12-07 07:05 UTC): 64x64 on 1x64x64
#: rate 2 (A's) 0.70, 128x128 (B's) 0.69, 256x256 on 4x16x16 rate 1 0.62, on 1x64x64 rate 2
#: 0.63, 512x512 rate 2 0.42, rate 6 on 1x33x33 0.60, 256x2048 on 1x65x65 rate 6 0.54;
#: below it 32x64 on 1x64x64 rate 3 1.13, 32x32 on 1x96x96 1.09, 32x16 (C's) 1.06. float64
#: (``--dtype float64 --rounds 5``) A 0.60, B 0.69, 256x256 rate 2 0.51, 512x512 rate 6
#: 0.56; float16 0.79, 0.56, 0.58, 0.69.
WINOGRAD_WIDE_POCL_FROM_CHANNEL_PAIRS = 64 * 64

#: ... and its temporaries (both transformed inputs, 4x theirs, and the partial sums) take
#: at most these bytes, none more than the device's largest allocation and all at most
#: half its memory; beyond, the direct kernel, whose partial sums the inputs' size bounds.
#: (1x65x65 2048->256 rate 6 takes 359 MiB.)
WINOGRAD_TEMPORARY_BYTES = 512 << 20

#: Bytes of a ``wgrad_products`` work-item's accumulators: 12 of 16 256-bit registers
#: (6 input channels x two 8-float vectors) where vectors are 256 bits wide, 16 of 32
#: 512-bit ones (8 x two 16-float vectors) where wider.
_NARROW_TILE_BYTES, _WIDE_TILE_BYTES = 12 * 32, 16 * 64

#: Bytes of the transformed inputs (both) a chunk of tiles of ``wgrad_products`` streams
#: for one of the 16 products: a core's L2 holds them while the register tiles of every
#: channel read them. B (8x32x32 128->128 rate 2) on PyPI's PoCL, over 256 KiB: 64 KiB
#: 1.70, 128 KiB 1.30, 512 KiB 0.96, 1 MiB 1.01, 4 MiB 1.10.
WINOGRAD_CHUNK_BYTES = 512 << 10


class WinogradLayout(NamedTuple):
    """How the Winograd filter gradient runs a problem: a register tile of ``gc`` input
    channels x ``ov`` vectors of ``bc`` output channels, the tiles of 2x2 pixels of d
    per axis (``phases`` and ``blocks`` of rows, then of columns; ``tiles`` in all),
    summed in ``chunks`` of ``tiles_per_chunk``; the temporaries' elements in the dtype's
    (float16 keeps them in float32, which counts twice)."""

    bc: int
    gc: int
    ov: int
    phases_h: int
    blocks_h: int
    phases_w: int
    blocks_w: int
    tiles: int
    chunks: int
    tiles_per_chunk: int

    def xt_row(self, cin: int) -> int:
        """Elements of a row of the transformed x: every register tile's input channels,
        rounded up to a vector."""
        return -(-(-(-cin // self.gc) * self.gc) // self.bc) * self.bc

    def coutp(self, cout: int) -> int:
        """Output channels rounded up to a register tile's (``COUTP``)."""
        wb = self.bc * self.ov
        return -(-cout // wb) * wb

    def buffers(self, args: ConvArgs) -> tuple[int, int, int]:
        """Elements, in the accumulation type, of the transformed x, the transformed d and
        the partial sums."""
        _, _, cin, cout = args.filters_shape
        return (16 * self.tiles * self.xt_row(cin), 16 * self.tiles * self.coutp(cout),
                self.chunks * 16 * cin * self.coutp(cout))

    def temporaries(self, args: ConvArgs, dtype) -> dict[str, int]:
        """Elements (in ``dtype``'s) of each temporary buffer."""
        per = acc_itemsize(dtype) // np.dtype(dtype).itemsize
        return {f"the filter gradient's {what}": per * count for what, count in
                zip(("transformed x", "transformed d", "partial sums"), self.buffers(args))}


def winograd_layout(device: cl.Device, dtype, args: ConvArgs, gc: int | None = None,
                    ov: int | None = None, bc: int | None = None,
                    chunk_bytes: int | None = None, force: bool = False) -> WinogradLayout | None:
    """The :class:`WinogradLayout` of ``args`` on ``device``, or None where the Winograd
    filter gradient does not run: filters other than 3x3 or no live tap; by default also
    too few multiply-adds or channels (:data:`WINOGRAD_FROM_MACS`,
    :data:`WINOGRAD_FROM_CHANNEL_PAIRS`), tiles that the phases fill too thinly
    (:data:`WINOGRAD_BELOW`), temporaries over :data:`WINOGRAD_TEMPORARY_BYTES`,
    ``ATROUS_CL_WINOGRAD=0``, and every device but PoCL's CPU driver on x86 (with 256-bit
    vectors, PyPI's PoCL 3.0, :func:`atrous_cl.tiles.pocl_narrow`; with 512-bit ones,
    Debian's PoCL 3.1, from :data:`WINOGRAD_WIDE_POCL_FROM_CHANNEL_PAIRS`) and Intel's CPU
    runtime from :data:`WINOGRAD_INTEL_FROM_CHANNEL_PAIRS` with 512-bit vectors (below, its
    kernels took B's filter gradient 1.03-1.14x the direct kernel's time, with transforms
    of 1-2 ms that PoCL ran in half); PoCL off x86, Intel's runtime on AVX2 hosts and GPUs
    are unmeasured. ``gc``, ``ov``, ``bc``, ``chunk_bytes`` replace the defaults (two vectors of
    output channels as wide as the device's, and as many input channels as keep the
    accumulators within :data:`_NARROW_TILE_BYTES` or :data:`_WIDE_TILE_BYTES`: 6 and 8 in
    float32, 4 for float64's 16-double vectors); ``force``: run wherever it can (tests,
    benchmarks)."""
    kh, kw, cin, cout = args.filters_shape
    n, hd, wd = args.output_shape[:3]
    dil = dilation(args)
    if (kh, kw) != (3, 3) or dil is None or 0 in (n, hd, wd, cin, cout) \
            or 0 in args.value_shape[1:3]:
        return None
    rate_h, _, rate_w, _ = dil
    phases_h, phases_w = min(rate_h, hd), min(rate_w, wd)
    blocks_h, blocks_w = -(-(-(-hd // rate_h)) // 2), -(-(-(-wd // rate_w)) // 2)
    tiles = n * phases_h * blocks_h * phases_w * blocks_w
    f = facts(device)
    if not force:
        if is_pocl(device) and f.type & cl.device_type.CPU and "x86_64" in f.version:
            pairs = (WINOGRAD_FROM_CHANNEL_PAIRS if tiles_module.pocl_narrow(device)
                     else WINOGRAD_WIDE_POCL_FROM_CHANNEL_PAIRS)
        elif is_intel_cpu(device) and tiles_module.max_channels(device, np.float32, 16) == 16:
            pairs = WINOGRAD_INTEL_FROM_CHANNEL_PAIRS
        else:
            return None
        if (not tiles_module.winograd_enabled() or cin * cout < pairs
                or n * hd * wd * 9 * cin * cout < WINOGRAD_FROM_MACS
                or 16 * tiles > WINOGRAD_BELOW * 9 * n * hd * wd):
            return None
    width = tiles_module.max_channels(device, dtype, cout)
    bc = width if bc is None else bc
    ov = (2 if cout > bc else 1) if ov is None else ov
    if gc is None:
        narrow = tiles_module.max_channels(device, dtype, 1 << 30) * acc_itemsize(dtype) <= 32
        budget = _NARROW_TILE_BYTES if narrow else _WIDE_TILE_BYTES
        gc = max(1, min(cin, budget // (ov * bc * acc_itemsize(dtype))))
    chunk_bytes = WINOGRAD_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    coutp = -(-cout // (bc * ov)) * bc * ov
    per_tile = (-(-cin // gc) * gc + coutp) * acc_itemsize(dtype)
    chunks = -(-tiles // max(1, chunk_bytes // per_tile))
    # Each chunk keeps 16 products of every channel pair: with many channels (1x65x65
    # 2048->256 rate 6: 33.5 MiB a chunk, 24 chunks of 512 KiB) they would outgrow the
    # transformed inputs; bound them by those (or _PARTIALS_FLOOR elements).
    per_partial = 16 * cin * coutp
    budget = max(_PARTIALS_FLOOR, 16 * tiles * per_tile // acc_itemsize(dtype))
    chunks = max(1, min(chunks, budget // per_partial))
    per_chunk = -(-tiles // chunks)
    plan = WinogradLayout(bc, gc, ov, phases_h, blocks_h, phases_w, blocks_w, tiles,
                          -(-tiles // per_chunk), per_chunk)
    if not force:
        sizes = [count * acc_itemsize(dtype) for count in plan.buffers(args)]
        if (sum(sizes) > min(WINOGRAD_TEMPORARY_BYTES, f.global_mem // 2)
                or max(sizes) > f.max_alloc):
            return None
    return plan


def winograd_products_local(kernel: cl.Kernel, device: cl.Device, dtype, plan: WinogradLayout,
                           ob: int, cg: int) -> tuple[int, int, int] | None:
    """The local size of ``wgrad_products`` (global ``(ob, cg, 16 * chunks)``): on PoCL's CPU
    driver, groups of every register tile of one product and chunk (or as many as divide
    its axes within the kernel's and the device's largest group, :data:`POCL_GROUP_BYTES`
    of tiles and each axis's largest size), which read the same transformed tiles while the
    core's caches hold them. The groups PyPI's PoCL 3.0 chose took B's filter gradient
    (8x32x32 128->128 rate 2) 1.24x the time of the direct kernel, these 0.81 (AMD Zen 4,
    ``/tmp`` script, 2026-12-07). Elsewhere None: the driver's choice."""
    if not (is_pocl(device) and facts(device).type & cl.device_type.CPU):
        return None
    most = min(_largest_group(kernel, device),
               max(1, POCL_GROUP_BYTES // (plan.gc * plan.ov * plan.bc * acc_itemsize(dtype))))
    sizes = tuple(facts(device).max_item_sizes) + (1 << 30,) * 2
    first = largest_divisor(ob, min(most, sizes[0]))
    second = largest_divisor(cg, max(1, min(most // first, sizes[1])))
    return first, second, 1


def winograd_options(dtype: np.dtype, args: ConvArgs, plan: WinogradLayout) -> tuple[str, ...]:
    """``-D`` options for :data:`WINOGRAD_FILE`."""
    _, _, cin, cout = args.filters_shape
    return TYPE_OPTIONS[np.dtype(dtype).type] + (
        f"-DBC={plan.bc}", f"-DOV={plan.ov}", f"-DGC={plan.gc}", f"-DCIN={cin}",
        f"-DCOUT={cout}", f"-DCOUTP={plan.coutp(cout)}") + dilation_options(*dilation(args))


def winograd_launch(queue: cl.CommandQueue, x: cl_array.Array, d: cl_array.Array,
                    out: cl_array.Array, args: ConvArgs, plan: WinogradLayout,
                    wait: list) -> cl.Event:
    """:func:`launch` by the Winograd filter gradient (:data:`WINOGRAD_FILE`'s four
    kernels), after ``wait``."""
    options = winograd_options(out.dtype, args, plan)
    kernels, lock = programs.get_kernels(queue.context, WINOGRAD_FILE, options)
    _, _, cin, cout = args.filters_shape
    n, hx, wx, _ = args.value_shape
    hd, wd = args.output_shape[1:3]
    wb = plan.bc * plan.ov
    coutp = plan.coutp(cout)
    cg = -(-cin // plan.gc)
    counts = tuple(np.int32(v) for v in (plan.phases_h, plan.blocks_h, plan.phases_w,
                                         plan.blocks_w)) + (np.int64(plan.tiles),)
    cinp = plan.xt_row(cin)
    xt, dt, partial = (memory.scratch(queue, count * acc_itemsize(out.dtype))
                       for count in plan.buffers(args))
    x_in = (x.base_data, np.int64(element_offset(x)))
    d_in = (d.base_data, np.int64(element_offset(d)))
    sizes = (np.int32(n), np.int32(hx), np.int32(wx), np.int32(hd), np.int32(wd))
    try:
        with lock:
            x_done = enqueue(kernels["wgrad_x"], queue, ((plan.tiles, cinp // plan.bc), None),
                             (*x_in, xt, np.int32(hx), np.int32(wx), *counts), wait)
            d_done = enqueue(kernels["wgrad_d"], queue, ((plan.tiles, coutp // plan.bc), None),
                             (*d_in, dt, np.int32(hd), np.int32(wd), *counts), wait)
            summed = enqueue(kernels["wgrad_products"], queue,
                             ((coutp // wb, cg, 16 * plan.chunks),
                              winograd_products_local(kernels["wgrad_products"], queue.device,
                                                      out.dtype, plan, coutp // wb, cg)),
                             (xt, dt, partial, np.int64(plan.tiles),
                              np.int64(plan.tiles_per_chunk)), [x_done, d_done])
            done = enqueue(kernels["wgrad_out"], queue, ((coutp // plan.bc, cin), None),
                           (partial, np.int32(plan.chunks), *x_in, *d_in, out.base_data,
                            np.int64(element_offset(out)), *sizes), [summed, *wait])
    except cl.Error as e:
        raise DeviceError(f"launching the Winograd filter gradient on {describe(queue.device)} "
                          f"failed: {e}", status=status_name(e), source=WINOGRAD_FILE,
                          options=options) from e
    return done


def _empty_sums(args: ConvArgs) -> bool:
    """Whether every entry of the filter gradient is an empty sum: no pixels, or no tap
    landing inside x."""
    return (math.prod(args.value_shape) == 0 or math.prod(args.output_shape) == 0
            or dilation(args) is None)


def default_layout(device: cl.Device, dtype, args: ConvArgs) -> Layout | WinogradLayout:
    """The layout :func:`launch` takes where it is given none."""
    return winograd_layout(device, dtype, args) or layout(device, dtype, args)


def _direct_options(device: cl.Device, dtype, args: ConvArgs, plan: Layout) -> tuple[str, ...]:
    """``-D`` options of :data:`KERNEL_FILE` for the direct ``plan``."""
    tile, gc, chunks, _, _, ov, kt, xpack, cb, dpack = plan
    return build_options(dtype, args, tile, gc, ov, kt, widens_inputs(device, dtype), xpack, cb,
                         chunks == 1, dpack)


def prepare(context: cl.Context, device: cl.Device, dtype, args: ConvArgs
            ) -> Layout | WinogradLayout | None:
    """The layout :func:`launch` takes for ``args`` on ``device``, its program built now;
    None where there is nothing to build (empty sums, or no filter gradient).

    A vjp's calls prepare both steps before launching either, so that a build failure
    here is raised before the data gradient's kernel has written the caller's ``d_value``
    (it left ``out=(d_value, d_filters)`` half-written).

    Raises:
        DeviceError: the program does not build.
    """
    if math.prod(args.filters_shape) == 0 or _empty_sums(args):
        return None
    plan = default_layout(device, dtype, args)
    if isinstance(plan, WinogradLayout):
        programs.get_kernels(context, WINOGRAD_FILE, winograd_options(dtype, args, plan))
    else:
        programs.get_kernels(context, KERNEL_FILE, _direct_options(device, dtype, args, plan))
    return plan


def launch(queue: cl.CommandQueue, x: cl_array.Array, d: cl_array.Array,
           out: cl_array.Array, args: ConvArgs, plan: Layout | WinogradLayout | None = None
           ) -> cl.Event | None:
    """``out[a, b, c, o] = sum x[n, i - top + a*rate, j - left + b*rate, c] * d[n, i, j, o]``.

    ``args`` describes the forward conv from ``x`` (its value) to ``d`` (its
    output); ``out`` has ``args.filters_shape``. ``plan`` replaces the default
    :func:`layout` (benchmarks and tests). Events as for
    :func:`atrous_cl.launch.transpose`.
    """
    if out.size == 0:
        return None
    wait = [*x.events, *d.events, *out.events]
    # No pixels, or no tap landing inside x: every entry is an empty sum.
    if _empty_sums(args):
        return memory.fill(queue, out, 0, wait)
    if plan is None:
        plan = default_layout(queue.device, out.dtype, args)
    if isinstance(plan, WinogradLayout):
        done = winograd_launch(queue, x, d, out, args, plan, wait)
        out.add_event(done)
        return done
    tile, gc, chunks, rows_per_chunk, count, ov, kt, xpack, cb, dpack = plan
    _check_groups(cb, xpack)  # a plan made by hand too
    wide = widens_inputs(queue.device, out.dtype)
    # One chunk: its sums are the result, stored by the partial kernel (no sum pass).
    one_chunk = chunks == 1
    options = _direct_options(queue.device, out.dtype, args, plan)
    kernels, lock = programs.get_kernels(queue.context, KERNEL_FILE, options)
    kh, kw, cin, cout = args.filters_shape
    n, hd, wd, _ = args.output_shape
    # Partial sums stay in the accumulation type: float32 for float16 storage (count has it).
    # A buffer of its own (offset 0): filter_grad_sum's vector loads assume it aligned.
    partial = (None if one_chunk else memory.scratch(queue, count * out.dtype.itemsize))
    try:
        with lock:
            if xpack:
                x_data, x_ready = _pack_x(kernels, queue, x, args, gc, wide, wait)
                x_in = (x_data, np.int64(0))
            elif wide:
                # float16 on a CPU: widened once, not converted in the inner loop.
                x_data, x_ready = widen(kernels, queue, x, wait)
                x_in = (x_data, np.int64(0))
            else:
                x_in, x_ready = (x.base_data, np.int64(element_offset(x))), None
            if dpack:
                d_data, d_ready = _pack_d(kernels, queue, d, args, tile, ov, wide, wait)
                d_in = (d_data, np.int64(0))
            elif wide:
                d_data, d_ready = widen(kernels, queue, d, wait)
                d_in = (d_data, np.int64(0))
            else:
                d_in, d_ready = (d.base_data, np.int64(element_offset(d))), None
            inputs = (*x_in, *d_in)
            ready = [*(e for e in (x_ready, d_ready) if e is not None), *wait]
            sums = ((out.base_data, np.int64(element_offset(out))) if one_chunk
                    else (partial, np.int64(0)))
            summed = enqueue(
                kernels["filter_grad_partial"], queue,
                launch_geometry(args.filters_shape, tile, gc, chunks, ov, kt, cb,
                                *group_limits(kernels["filter_grad_partial"], queue.device,
                                              out.dtype, tile, gc, ov, kt, cb)),
                (*inputs, *sums,
                 np.int32(args.value_shape[1]), np.int32(args.value_shape[2]),
                 np.int32(hd), np.int32(wd), np.int64(n * hd), np.int64(rows_per_chunk)),
                ready)
            done = summed if one_chunk else enqueue(kernels["filter_grad_sum"], queue,
                           ((tile.padded_channels(cout) // tile.channels, cin, kh * kw), None),
                           (partial, np.int32(chunks), out.base_data,
                            np.int64(element_offset(out))),
                           [summed, *wait])
    except cl.Error as e:
        raise _device_error(queue, "the filter gradient", e, options) from e
    out.add_event(done)
    return done

