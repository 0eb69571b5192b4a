# SPDX-License-Identifier: Apache-2.0
"""The GPU path of the transpose op: a work-group tile staged in local memory.

``kernels/atrous_conv2d_transpose_local.cl`` computes what
``atrous_conv2d_transpose`` in ``kernels/atrous_conv2d_transpose.cl`` does,
from the same packed weights (that file's ``repack_filters``, built with the
same options), but a work-group of :class:`LocalTile` shape copies the input
window and the weights its work-items share into ``__local`` memory first.
:func:`launch` has the contract of :func:`atrous_cl.launch.transpose`.

The op runs it only where ``atrous-cl tune`` stored one of its tiles as the
fastest (:func:`tune_candidates`: GPUs only); untuned problems take the register
tiles. On an NVIDIA H200 it ran C and D 6-7% faster than the best register tile
and A and B 1.4-1.7x slower (docs/performance-history.md, "Issue 13 on a GPU"). Verified
on CPU devices and under Oclgrind (local memory, barriers and data races
included), where it is 5-50x slower than the register-tile kernel, as a GPU
design would be.
"""

from __future__ import annotations

import functools
import threading
from typing import NamedTuple

import numpy as np
import pyopencl as cl

from atrous_cl import memory, programs
from atrous_cl.errors import DeviceError
from atrous_cl.facts import describe, status_name
from atrous_cl.launch import KERNEL_FILE as REPACK_FILE
from atrous_cl.launch import build_options as register_build_options
from atrous_cl.launch import (compared_bytes, element_offset, enqueue, kernel_dilation,
                              packed_elements, packed_filters, repack_geometry)
from atrous_cl.tiles import Tile, acc_itemsize, gpu_only
from atrous_cl.validation import TransposeArgs

KERNEL_FILE = "atrous_conv2d_transpose_local.cl"
#: The main kernel's name in :data:`KERNEL_FILE`.
KERNEL_NAME = "atrous_conv2d_transpose_local"
#: The main kernel's arguments: value, value_off, wt, out, out_off, H, W, OH, OW.
_MAIN_ARG_DTYPES = [None, np.int64, None, None, np.int64, np.int32, np.int32, np.int32, np.int32]

#: Most local memory one work-group's staging takes, in bytes: the least that
#: OpenCL's full profile guarantees (CL_DEVICE_LOCAL_MEM_SIZE >= 32 KiB), so
#: that a GPU keeps room for several work-groups per compute unit. Devices
#: with less get their own size (:func:`local_budget`).
LOCAL_MEM_BUDGET = 32 * 1024

#: Input channels staged at a time, at most: more would shrink the window.
_MAX_CHUNK = 16

_VECTOR_WIDTHS = (1, 2, 4, 8, 16)


class LocalTile(NamedTuple):
    """A work-group of ``slices x width x height`` work-items (local axes 0, 1, 2), each
    summing ``pixels`` output pixels of one row (``width`` apart) x ``channels`` output
    channels (one vector: 1, 2, 4, 8 or 16)."""

    width: int
    height: int
    slices: int
    pixels: int
    channels: int

    @property
    def group_size(self) -> int:
        return self.width * self.height * self.slices

    def padded_channels(self, cout: int) -> int:
        """``cout`` rounded up to whole vectors: the packed filters' width (COUTP)."""
        return -(-cout // self.channels) * self.channels

    def __str__(self) -> str:
        return f"{self.slices}x{self.width}x{self.height}/{self.pixels}x{self.channels}"

    @classmethod
    def parse(cls, text: str) -> LocalTile:
        """The tile :meth:`__str__` writes, ``SxWxH/PxC``: slices x width x height
        work-items, pixels x channels a work-item (the benchmarks' ``--tiles``)."""
        group, item = text.split("/")
        slices, width, height = map(int, group.split("x"))
        pixels, channels = map(int, item.split("x"))
        return cls(width, height, slices, pixels, channels)


class Staging(NamedTuple):
    """What one stage copies: ``chunk`` input channels (OC) of ``taps`` tap columns (ST),
    the staged pixels ``stride`` (OCS) words apart."""

    chunk: int
    taps: int
    padded: bool = True

    @property
    def stride(self) -> int:
        """Words between staged pixels: an even chunk gets one spare word, so that the
        work-items of a row read one channel from as many banks of a GPU's local
        memory as they are pixels (a stride of 16 falls in 2 of 32 banks)."""
        return self.chunk + (1 if self.padded and self.chunk % 2 == 0 else 0)


def staging_bytes(dtype, args: TransposeArgs, tile: LocalTile, staging: Staging) -> int:
    """Local memory the kernel declares: the input window, its inside-value mask and the
    weights of one stage."""
    rate_w = kernel_dilation(args, forward_filters=True)[2]  # the same where a tap lands
    span = tile.width * tile.pixels + (staging.taps - 1) * rate_w
    words = tile.height * span * staging.stride + staging.taps * staging.chunk * tile.slices * tile.channels
    return words * acc_itemsize(dtype) + tile.height * span  # and a byte a pixel: inside value?


def choose_staging(dtype, args: TransposeArgs, tile: LocalTile, budget: int,
                   padded: bool = True) -> Staging | None:
    """The stage that reuses most within ``budget`` bytes, or None when not even one
    channel of one tap fits.

    Staging all ``kw`` tap columns of a tap row at once reads each input
    column once for all of them (their windows overlap unless the rate is
    large); more channels a stage mean fewer barriers. The product of the two
    decides, the channels break ties. The problem must have a live tap
    (:func:`atrous_cl.launch.kernel_dilation`).
    """
    kw, cin = args.filters_shape[1], args.filters_shape[3]
    chunks = sorted({min(cin, c) for c in (_MAX_CHUNK, 8, 4, 2, 1)}, reverse=True)
    fitting = [Staging(chunk, taps, padded) for taps in {kw, 1} for chunk in chunks
               if staging_bytes(dtype, args, tile, Staging(chunk, taps, padded)) <= budget]
    return max(fitting, key=lambda s: (s.chunk * s.taps, s.chunk), default=None)


class _Limits(NamedTuple):
    max_group: int
    max_items: tuple[int, ...]
    local_mem: int


@functools.lru_cache(maxsize=64)
def _limits(device: cl.Device) -> _Limits:
    """The device's work-group and local-memory limits (read once: driver round trips)."""
    return _Limits(device.max_work_group_size, tuple(device.max_work_item_sizes),
                   device.local_mem_size)


def local_budget(device: cl.Device) -> int:
    """Bytes of local memory a work-group's staging may take on ``device``."""
    return min(LOCAL_MEM_BUDGET, _limits(device).local_mem)


def _useful_channels(cout: int) -> int:
    return min(16, 1 << max(0, (cout - 1).bit_length()))


def check_tile(device: cl.Device, tile: LocalTile) -> None:
    """Refuse a tile the device cannot run, naming the limit.

    Raises:
        TypeError: ``tile`` is not a :class:`LocalTile`.
        ValueError: a field out of range, or a work-group beyond the device's limits.
    """
    if not isinstance(tile, LocalTile):
        raise TypeError(f"tile must be an atrous_cl.local_tile.LocalTile, got {type(tile).__name__}")
    if not all(type(x) is int and x >= 1 for x in tile):
        raise ValueError(f"tile's fields must be positive ints, got {tile!r}")
    if tile.channels not in _VECTOR_WIDTHS:
        raise ValueError(f"tile.channels must be one of {_VECTOR_WIDTHS} (an OpenCL vector), "
                         f"got {tile.channels}")
    limits = _limits(device)
    if tile.group_size > limits.max_group:
        raise ValueError(f"tile {tile} has {tile.group_size} work-items, more than the "
                         f"{limits.max_group} of a work-group on {describe(device)}")
    for axis, (size, most) in enumerate(zip((tile.slices, tile.width, tile.height),
                                            limits.max_items)):
        if size > most:
            raise ValueError(f"tile {tile} has {size} work-items along local axis {axis}, more "
                             f"than the {most} {describe(device)} allows")


def default_tile(device: cl.Device, dtype, cout: int) -> LocalTile:
    """The untuned tile: 16 x 16 work-items (fewer where the device allows fewer), one pixel
    and up to 4 output channels each. Unmeasured on a GPU: a starting point for tuning.
    """
    limits = _limits(device)
    width = min(16, limits.max_items[1], limits.max_group)
    height = max(1, min(16, limits.max_items[2], limits.max_group // width))
    return LocalTile(width, height, 1, 1, min(4, _useful_channels(cout)))


def candidates(device: cl.Device, dtype, cout: int) -> list[LocalTile]:
    """Tiles worth timing on ``device``: work-groups of 64-1024 work-items within its limits,
    1-4 pixels x 1-8 channels a work-item, each with room in local memory for a stage of
    one channel of one tap at least (a problem may still need fewer, :func:`choose_staging`)."""
    limits = _limits(device)
    budget = local_budget(device)
    widest = min(8, _useful_channels(cout))
    found = []
    for width, height in ((16, 16), (32, 8), (8, 8), (16, 4), (32, 4), (32, 32)):
        for slices in (1, 2, 4):
            for pixels in (1, 2, 4):
                for channels in (c for c in _VECTOR_WIDTHS if c <= widest):
                    tile = LocalTile(width, height, slices, pixels, channels)
                    pixels_staged = height * width * pixels
                    window = (pixels_staged + slices * channels) * acc_itemsize(dtype) + pixels_staged
                    if ((slices - 1) * channels >= cout or tile.group_size > limits.max_group
                            or any(s > m for s, m in zip((slices, width, height), limits.max_items))
                            or window > budget):
                        continue
                    found.append(tile)
    return found


#: The tiles ``atrous-cl tune`` times on a GPU, before :func:`tune_candidates`' checks:
#: those ``benchmarks/gpu_sweep.py`` timed on an NVIDIA H200, whose best on A-D
#: (2x32x4/1x8, 2x16x8/2x8, 2x16x8/1x8) are among them; 48 builds at most.
TUNE_TILES = tuple(LocalTile(width, height, slices, pixels, channels)
                   for width, height in ((16, 16), (32, 8), (16, 8), (32, 4))
                   for slices in (1, 2) for pixels in (1, 2, 4) for channels in (4, 8))


def is_tune_tile(tile: LocalTile) -> bool:
    """Whether ``tile`` is one of :data:`TUNE_TILES`, its channel vector perhaps narrowed
    (:func:`tune_candidates`)."""
    return tile.channels in (1, 2, 4, 8) and any(
        tile._replace(channels=t.channels) == t and tile.channels <= t.channels for t in TUNE_TILES)


def tune_candidates(device: cl.Device, dtype, args: TransposeArgs) -> list[LocalTile]:
    """The local tiles ``atrous-cl tune`` times for ``args`` on ``device``, beside the register
    tiles: on a GPU (not also a CPU), :data:`TUNE_TILES` whose work-group the device runs,
    whose channel vector is no wider than the output channels need (a narrower one in its
    place) and whose stage fits in :func:`local_budget`; none elsewhere, nor for a problem
    without work. A tuned entry is used only if it is one of these."""
    if not gpu_only(device) or 0 in args.value_shape + args.filters_shape + args.output_shape:
        return []
    cout = args.filters_shape[2]
    limits, budget, useful = _limits(device), local_budget(device), _useful_channels(cout)
    found = []
    for tile in TUNE_TILES:
        tile = tile._replace(channels=min(tile.channels, useful))
        if (tile in found or (tile.slices - 1) * tile.channels >= cout
                or tile.group_size > limits.max_group
                or any(s > m for s, m in zip((tile.slices, tile.width, tile.height),
                                             limits.max_items))
                or choose_staging(dtype, args, tile, budget) is None):
            continue
        found.append(tile)
    return found


def build_options(dtype, args: TransposeArgs, tile: LocalTile, forward_filters: bool = False,
                  budget: int = LOCAL_MEM_BUDGET, padded: bool = True) -> tuple[str, ...]:
    """``-D`` options for both kernel files: the CPU kernel's shared ones (its ``repack_filters``
    packs the weights) and the work-group's shape and staging.

    The problem must have a live tap (:func:`atrous_cl.launch.kernel_dilation`).

    Raises:
        ValueError: the tile's staging does not fit in ``budget`` bytes of local memory.
    """
    staging = choose_staging(dtype, args, tile, budget, padded)
    if staging is None:
        raise ValueError(f"tile {tile} needs {staging_bytes(dtype, args, tile, Staging(1, 1))} "
                         f"bytes of local memory for {np.dtype(dtype).name}, more than the "
                         f"{budget} it may take; use a smaller work-group or fewer pixels")
    # The packed weights in one row of every channel, [KH, KW, CIN, COUTP], as this kernel
    # reads them.
    shared = register_build_options(dtype, args, Tile(tile.pixels, tile.channels), forward_filters,
                                    blocked=False)
    return shared + (f"-DLX={tile.width}", f"-DLY={tile.height}", f"-DLC={tile.slices}",
                     f"-DOC={staging.chunk}", f"-DOCS={staging.stride}", f"-DST={staging.taps}")


def geometry(output_shape, tile: LocalTile) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(global_size, local_size)`` of the main kernel.

    Axis 0 covers the output channels in vectors, axis 1 the columns in
    ``tile.pixels`` per work-item, axis 2 the rows of each image rounded up to
    whole work-groups (a work-group never spans two images), each rounded up
    to whole work-groups; the spare work-items stage but store nothing.
    """
    n, oh, ow, cout = output_shape
    slices = -(-tile.padded_channels(cout) // tile.channels)
    columns = -(-ow // tile.pixels)
    local = (tile.slices, tile.width, tile.height)
    return ((-(-slices // tile.slices) * tile.slices, -(-columns // tile.width) * tile.width,
             n * -(-oh // tile.height) * tile.height), local)


class _Plan(NamedTuple):
    repack_kernel: cl.Kernel
    repack_lock: threading.Lock
    main_kernel: cl.Kernel
    main_lock: threading.Lock
    options: tuple[str, ...]
    packed_nbytes: int
    repack: tuple
    main: tuple
    sizes: tuple
    # Per queue, the host filters' bytes last repacked, their packed buffer and its
    # repack's event (atrous_cl.launch.packed_filters); changed under repack_lock.
    repacked: dict


@functools.lru_cache(maxsize=256)
def _plan(context: cl.Context, device: cl.Device, dtype: np.dtype, args: TransposeArgs,
          tile: LocalTile, forward_filters: bool, budget: int, padded: bool) -> _Plan | None:
    """Kernels, geometry and scalar arguments of a launch, built once; None when no
    tap lands inside ``value``."""
    if kernel_dilation(args, forward_filters) is None:
        return None
    options = build_options(dtype, args, tile, forward_filters, budget, padded)
    repack, repack_lock = programs.get_kernels(context, REPACK_FILE, options)
    main, main_lock = programs.get_kernels(context, KERNEL_FILE, options)
    kernel = main[KERNEL_NAME]
    # programs.scalar_arg_dtypes reads `__kernel void name(`, which the attribute
    # between __kernel and void hides; declared, pyopencl sets arguments fast.
    kernel.set_scalar_arg_dtypes(_MAIN_ARG_DTYPES)
    fits = kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, device)
    if tile.group_size > fits:
        raise ValueError(f"tile {tile} has {tile.group_size} work-items, more than the {fits} "
                         f"this build of {KERNEL_FILE} can run on {describe(device)}")
    kh, kw, cout, cin = args.filters_shape
    _, oh, ow, _ = args.output_shape
    # repack_filters writes the packed weights and, after them, what the register-tile
    # kernel reads besides (packed_elements); this kernel reads the weights, and with
    # FORWARD_FILTERS the notes at FINITE too.
    packed = packed_elements(args.filters_shape, tile.padded_channels(cout)) * np.dtype(dtype).itemsize
    return _Plan(repack["repack_filters"], repack_lock, kernel, main_lock, options, packed,
                 repack_geometry(args.filters_shape, Tile(tile.pixels, tile.channels),
                                 blocked=False),
                 geometry(args.output_shape, tile),
                 (np.int32(args.value_shape[1]), np.int32(args.value_shape[2]), np.int32(oh),
                  np.int32(ow)), {})


def plan(context: cl.Context, device: cl.Device, dtype, args: TransposeArgs, tile: LocalTile,
         forward_filters: bool = False, padded: bool = True) -> _Plan | None:
    """The kernels and geometry :func:`launch` builds for a problem with a nonempty output
    (None where it only fills zeros), made now: what the op prepares for a tuned tile.

    Raises:
        TypeError, ValueError: as :func:`launch`.
        DeviceError: the driver failed to build the kernels.
    """
    check_tile(device, tile)
    if 0 in args.value_shape + args.filters_shape:
        return None
    return _plan(context, device, np.dtype(dtype), args, tile, forward_filters,
                 local_budget(device), padded)


def launch(queue: cl.CommandQueue, value, filters, out, args: TransposeArgs,
           tile: LocalTile | None = None, forward_filters: bool = False, *,
           padded: bool = True) -> cl.Event | None:
    """Run the op on device arrays with the local-memory kernel.

    The contract of :func:`atrous_cl.launch.transpose`: the launches wait for the
    events of ``value``, ``filters`` and ``out``; the repack and the main
    kernel are chained by events (right on out-of-order queues); ``out`` gets
    the last event, which is returned (None when nothing was enqueued).
    ``forward_filters``: ``filters`` are the forward op's ``[kh, kw, in, out]``
    (:func:`atrous_cl.launch.forward_as_transpose`). Host filters whose bytes this
    queue packed last time are not packed again (:func:`atrous_cl.launch.packed_filters`).

    Args:
        tile: the work-group tile; :func:`default_tile` when None.
        padded: stage pixels :attr:`Staging.stride` apart (False: ``chunk`` apart, for
            measuring what the spare word saves).

    Raises:
        TypeError, ValueError: a tile the device cannot run (:func:`check_tile`,
            :func:`build_options`).
        DeviceError: the driver failed.
    """
    if out.size == 0:
        return None
    device = queue.device
    tile = default_tile(device, out.dtype, args.filters_shape[2]) if tile is None else tile
    p = plan(queue.context, device, out.dtype, args, tile, forward_filters, padded)
    if p is None:  # an empty sum everywhere
        return memory.fill(queue, out, 0, [*value.events, *filters.events, *out.events])
    # Host filters whose bytes this queue packed last time are not packed (nor, on a
    # GPU, copied) again: as the register-tile kernel's launch (packed_filters).
    raw = compared_bytes(filters)

    def repack(source, packed, wait_for):
        return enqueue(p.repack_kernel, queue, p.repack,
                       (source, np.int64(element_offset(filters)), packed), wait_for)

    try:
        # setting a kernel's arguments and enqueueing it must not interleave; the
        # repack's lock also guards the packed filters kept
        with p.repack_lock:
            packed, repacked = packed_filters(p.repacked, queue, filters, raw, p.packed_nbytes,
                                              repack)
        value_data = value.base_data
        with p.main_lock:
            done = enqueue(p.main_kernel, queue, p.main,
                           (value_data, np.int64(element_offset(value)), packed, out.base_data,
                            np.int64(element_offset(out)), *p.sizes),
                           [repacked, *value.events, *out.events])
    except cl.Error as e:
        raise DeviceError(f"launching {KERNEL_NAME} on {describe(device)} failed: {e}",
                          status=status_name(e), source=KERNEL_FILE,
                          options=p.options) from e
    out.add_event(done)
    return done
