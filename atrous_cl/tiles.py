# SPDX-License-Identifier: Apache-2.0
"""Register tiles: the output pixels x channels one work-item of the main kernel computes.

:func:`default_tile` is the untuned choice per device kind, :func:`candidates`
the tiles ``atrous-cl tune`` tries (:mod:`atrous_cl.tuning`); both keep to
vector widths the device's compiler handles.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import numpy as np
import pyopencl as cl

from atrous_cl import geometry
from atrous_cl.facts import facts, is_intel_cpu, is_pocl, max_vector_bytes, pocl_avx512


class Tile(NamedTuple):
    """Output pixels (along W) x output channels computed by one work-item: ``pixels``
    x ``vectors`` vectors of ``channels`` channels.

    With ``winograd``, a tile of the Winograd kernel
    (``kernels/atrous_conv2d_transpose_winograd.cl``): ``pixels``
    blocks of 2x2 output pixels along a row per work-group, times ``vectors``
    vectors of ``channels`` channels per register tile; written ``8x16x2w``.
    """

    pixels: int
    channels: int
    vectors: int = 1
    winograd: bool = False

    def padded_channels(self, cout: int) -> int:
        """``cout`` rounded up to whole channel tiles: the packed filters' width."""
        step = self.channels * self.vectors
        return -(-cout // step) * step

    def __str__(self) -> str:
        return (f"{self.pixels}x{self.channels}" + (f"x{self.vectors}" if self.vectors > 1 else "")
                + ("w" if self.winograd else ""))

    @classmethod
    def parse(cls, text: str) -> Tile:
        """The tile :meth:`__str__` writes: ``PxC``, ``PxCxV``, with ``w`` for Winograd's."""
        winograd = text.endswith("w")
        return cls(*map(int, text.removesuffix("w").split("x")), winograd=winograd)


def pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def pocl_narrow(device: cl.Device) -> bool:
    """PoCL building for a CPU target without 512-bit vectors (not :func:`pocl_avx512`):
    an AVX2 target, or a CPU off x86-64.

    PoCL 3.0 from PyPI (LLVM 14, target znver3: AVX2) aborts the process on
    some 16-wide float code and builds 8-wide double code into an empty
    program; Debian's PoCL 3.1 (LLVM 15, target skylake-avx512) runs 16-wide
    tiles fine, and 1.7-2.4x faster than 8-wide ones, as does PyPI's PoCL 3.0 where it
    targets an AVX-512 CPU (``icelake-client`` on an Intel Xeon of family 6 model 207:
    geometric mean over A-D 1.29x the 8-wide tiles' speed, ``python
    benchmarks/conv_form_ratio.py --devices 1:0 2:0 --rounds 61``, 2026-12-07).
    """
    return is_pocl(device) and not pocl_avx512(device)


#: Where :func:`_cpuinfo` reads the host CPU's description.
_CPUINFO = "/proc/cpuinfo"


@functools.cache
def _cpuinfo(field: str) -> str:
    """The first ``field`` line's value in :data:`_CPUINFO` (``flags``, ``vendor_id``);
    '' where there is none or it cannot be read."""
    try:
        with open(_CPUINFO, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def _host_avx512() -> bool:
    """Whether this machine's CPU has AVX-512 (``avx512f`` in ``/proc/cpuinfo``); False
    where that cannot be read."""
    return "avx512f" in _cpuinfo("flags").split()


def _host_intel() -> bool:
    """Whether this machine's CPU is Intel's (``GenuineIntel`` in ``/proc/cpuinfo``)."""
    return _cpuinfo("vendor_id") == "GenuineIntel"


def _intel_narrow(device: cl.Device) -> bool:
    """Intel's CPU runtime on a CPU without 512-bit vectors: it reports a native float
    vector of 8 (AMD EPYC Zen 3, AVX2), and the host CPU has no AVX-512 (the runtime runs
    on it; a report of 8 alone would also narrow an AVX-512 machine if the runtime said
    so there, unseen here).

    Its tiles then keep to 8-channel vectors like PyPI's PoCL: on a 2-core EPYC Zen 3,
    kernels only (``python benchmarks/tile_sweep.py --devices 1:0 --workloads ...
    --tiles ...``, 2026-12-04 16:35-16:45 UTC, 5-7 rounds), the 16-channel defaults ran
    D (5x5) 8x16 11.3 ms against 8x8 6.7 and 4x16 6.3; Winograd 8x16x2w A 2.78, B 17.8,
    C (8x16w) 1.68, E (8x16w) 0.124 against one 8-channel vector 8x8w 2.42, 15.6, 1.07,
    0.121 (two, 8x8x2w: 2.98, 20.2, 1.71, 0.142). Its Winograd tiles have since taken
    4 blocks of two or three such vectors (:data:`_NARROW_THREE_VECTORS_ABOVE`).
    """
    width = facts(device).float_width
    return is_intel_cpu(device) and 0 < width < 16 and not _host_avx512()


def _narrow(device: cl.Device) -> bool:
    """A CPU device whose kernels keep to 256-bit vectors (:func:`pocl_narrow`,
    :func:`_intel_narrow`)."""
    return pocl_narrow(device) or _intel_narrow(device)


def acc_itemsize(dtype) -> int:
    """Bytes of the type the kernels sum ``dtype`` in: 8 for float64, else 4 (float16 is
    summed in float32)."""
    return 8 if np.dtype(dtype) == np.float64 else 4


def _vector_width(device: cl.Device, dtype) -> int:
    """Widest vector of accumulators the kernels use: 16, or 32 bytes on a CPU device
    without 512-bit vectors (:func:`_narrow`)."""
    return 32 // acc_itemsize(dtype) if _narrow(device) else 16


def max_channels(device: cl.Device, dtype, cout: int) -> int:
    """Widest channel vector worth using: no wider than ``cout`` needs (:func:`_vector_width`)."""
    return min(pow2_at_least(cout), _vector_width(device, dtype))


def pixel_vector(device: cl.Device, dtype, filters_shape) -> int | None:
    """Pixels per work-item of the one-channel kernel (``atrous_conv2d_transpose_pixels``),
    a vector as wide as :func:`_vector_width` allows, when the problem runs on it (one
    channel in and out on a CPU); else None: the register tiles, which are all that GPUs
    keep (the one-channel kernel is unmeasured there)."""
    if tuple(filters_shape[2:]) != (1, 1) or not facts(device).type & cl.device_type.CPU:
        return None
    return _vector_width(device, dtype)


def _platform_tile(device: cl.Device, dtype, cout: int) -> Tile:
    """The untuned tile per platform, before :func:`default_tile` adjusts it to few
    output channels: 8x16 on Intel's CPU runtime and on PoCL with 512-bit vectors (two
    vectors, 8x16x2, for more than 16 output channels but in float64:
    :func:`_several_vectors`), 8x8 on other PoCL, 4x2 on GPUs (where
    :func:`default_for` takes :func:`gpu_tile` instead), 4x8 elsewhere.

    Measured on a 2-core AMD EPYC (Zen 5) with the phase-tile kernel, kernels
    only, every candidate (``python benchmarks/tile_sweep.py --devices 2:0 1:0
    --dtypes float64 float32``, workloads A-F of ``atrous-cl bench``; the time
    of the next best tile over 8x16's): float32, 8x16 was the fastest on A-E on
    Intel (4x16: 1.60 1.54 1.37 1.45 1.02) and on Debian's PoCL 3.1 (4x16 or
    16x8: 1.52 2.32 1.52 1.44 1.02). float64 has no better tile on both: on
    Intel 8x8 ran C and D in 0.95x and 0.89x of 8x16's time but A 1.11x, E 1.22x
    and B over 3x; on PoCL 16x8 ran B and D in 0.98x and 0.85x but A 1.05x, C
    1.13x, E 1.23x. (F, one channel in and out, runs the one-channel kernel on
    CPUs: :func:`pixel_vector`.) Earlier: PyPI's PoCL 3.0 (AVX2)
    8x8 best or within 1.04x on A-E; on an NVIDIA H100 (OpenCL 3.0, driver 580)
    GPUs want many small work-items: 4x2 came within 1.09x of each shape's
    best over A-D and E (geometric mean; 4x8 was 1.66x).
    """
    f = facts(device)
    if is_intel_cpu(device):
        tile = Tile(8, 16)
    elif is_pocl(device):
        tile = Tile(8, 8) if pocl_narrow(device) else Tile(8, 16)
    elif f.type & cl.device_type.GPU:
        tile = Tile(4, 2)
    else:
        tile = Tile(4, 8)
    tile = Tile(tile.pixels, min(tile.channels, max_channels(device, dtype, cout)))
    if tile.channels == 16 and cout > 16 and _several_vectors(device, dtype):
        tile = tile._replace(vectors=2)
    return tile


#: Output channels up to which Intel's CPU runtime runs the direct kernel fastest
#: with one channel per work-item (:func:`default_tile`), per accumulation type.
_INTEL_SCALAR_UP_TO = {4: 4, 8: 2}


def default_tile(device: cl.Device, dtype, cout: int) -> Tile:
    """The untuned tile of the direct kernel: :func:`_platform_tile`'s, but on Intel's
    CPU runtime, for 16 output channels or fewer, one channel per work-item (8x1) up
    to 4 of them (2 in float64), else a whole 16-channel vector (float32, float16).

    Intel's compiler vectorises a work-item's scalar code across work-items, and
    narrow vectors (2, 4, 8 channels) badly: kernels only, 2026-12-04 (``python
    benchmarks/tile_sweep.py --devices 2:0 --dtypes float32 float64 --shapes
    N,H,W,CIN,COUT,K,RATE,PADDING ... --tiles ...``), the best tile's time over
    the platform tile's, float32: 1x128x128, 32->2, 3, 4, 5x5 rate 2: 8x1 0.41,
    0.61, 0.73; 32->6, 8: 8x16 0.83, 0.93; 2x128x128 16->2 5x5 VALID 8x1 0.62;
    16->3 7x7 rate 3 8x1 0.61; float64 1x256x256 64->2 3x3 8x1 0.52, 16->2 5x5
    0.56, but 64->3, 4 the platform's 8x4 best. One output channel already took
    8x1. Debian's PoCL 3.1 runs scalar tiles 2-8x slower and keeps its own. With
    256-bit vectors (:func:`_narrow`), 4 pixels of two vectors (:data:`_NARROW_DIRECT`).
    """
    if _intel_scalar(device, dtype, cout):
        return Tile(8, 1)
    if is_intel_cpu(device) and cout <= 16 and acc_itemsize(dtype) == 4 and not _narrow(device):
        return Tile(8, 16)
    width = _vector_width(device, dtype)
    two = _NARROW_DIRECT._replace(channels=width)  # 4x4x2 in float64
    if cout > width and (pocl_narrow(device) or (
            _intel_narrow(device)
            and two.padded_channels(cout) == Tile(1, width).padded_channels(cout))):
        return two
    return _platform_tile(device, dtype, cout)


#: Why :func:`default_tile` gives CPUs with 256-bit vectors 4 pixels x two 8-channel
#: vectors (float32, float16; two 4-double vectors in float64): PyPI's PoCL 3.0 where the
#: output channels fill more than one vector, Intel's runtime where two pad no more
#: channels than one would. AMD EPYC Zen 3, kernels only, time over 8x8's (``python
#: benchmarks/tile_sweep.py --devices ... --workloads D --shapes ... --tiles ...``).
#: PyPI's PoCL (5 rounds, 2026-12-04 16:45-16:55 UTC): D (5x5, 16->16) 0.63, 5x5 32->32
#: 0.78, 64->64 0.85, 7x7 16->16 rate 3 0.68, 5x5 16->24 VALID 0.69 (8x8x2 1.33-1.58,
#: 4x8x4 1.06-1.88); float64 4x4x2 over 8x4, D 0.81, 5x5 32->32 0.83, 7x7 16->16 0.85,
#: 5x5 8->8 0.91 (4x8, one 8-double vector, 0.72 on D, but PoCL 3.0 has built such
#: vectors into empty programs). Intel's runtime (7 rounds, three sweeps, 2026-12-04
#: 22:17 UTC): D 0.97, 0.97, 0.99; 5x5 32->32 0.98, 0.99, 0.99; 64->64 1.00, 0.98, 0.98;
#: 16->16 rate 1 0.96, 0.97, 1.00; 64->128 rate 3 0.91 thrice; 7x7 16->16 0.77, 0.80,
#: 0.80; 5x5 32->48 0.94, 0.94, 0.95; 4x4 32->32 0.72, 0.74, 0.71; 2x2 64->64 0.94, 0.94,
#: 0.93; 6x6 48->32 1.00, 0.99, 0.99 (4x16, one 16-channel vector, 0.71-1.05); float16
#: 0.77-1.00 and float64 (4x4x2 over 8x4) 0.73-0.96 on five of them; but 5x5 16->24 VALID,
#: where two vectors pad 24 channels to 32, 1.23-1.25, and 8->8 1.50 (the seventh pass's
#: sweep of 5 rounds had Intel's at 0.81-1.16).
_NARROW_DIRECT = Tile(4, 8, 2)


def _intel_scalar(device: cl.Device, dtype, cout: int) -> bool:
    """Whether :func:`default_tile` takes one output channel per work-item: Intel's CPU
    runtime, :data:`_INTEL_SCALAR_UP_TO` output channels or fewer."""
    return is_intel_cpu(device) and cout <= _INTEL_SCALAR_UP_TO[acc_itemsize(dtype)]


#: Output channels up to which :func:`default_for` prefers the direct 8x1 tile to the
#: Winograd kernel on Intel's CPU runtime: float32 and float64 only (float16 would
#: take the direct kernel's widening pass; unmeasured).
_INTEL_DIRECT_UP_TO = {np.dtype(np.float32): 3, np.dtype(np.float64): 2}


def _intel_direct(device: cl.Device, dtype, cout: int) -> bool:
    return is_intel_cpu(device) and cout <= _INTEL_DIRECT_UP_TO.get(np.dtype(dtype), 0)


def _pocl_direct(device: cl.Device, dtype, cout: int) -> bool:
    """Whether :func:`default_for` prefers the direct kernel to the Winograd kernel on
    PoCL: 16 output channels or fewer, float32 and float64 (float16 would take the direct
    kernel's widening pass: C 4x8x2w 0.74 of 4x8x2's time), where PoCL builds for a
    256-bit target (:func:`pocl_narrow`) and on PyPI's PoCL 3.0 (:func:`_pocl_3_0`) with
    512-bit vectors too. With 256-bit vectors, the direct kernel's two 8-channel vectors
    (:data:`_NARROW_DIRECT`). float64, 4x4x2w over 4x4x2: C 1.21, E 1.56 (9 rounds).
    Kernels only, the Winograd tile 4x8x2w's time over 4x8x2's, two runs of 15 rounds
    (``python benchmarks/tile_sweep.py --devices 2:0 --workloads A C E --shapes ...
    --tiles 4x8x2w 8x8x2w 4x8x2``, AMD EPYC Zen 3, 2026-12-04 16:42 UTC): C (32->16)
    1.35, 1.07; E (16->16) 1.52, 1.38; 1x64x64 16->16 1.29, 1.39; but 2x64x64 32->32
    0.99, 0.96, A (64->64) 0.72, 0.97, B (128->128, 4x8x4w) 0.56.

    PyPI's PoCL 3.0 with 512-bit vectors (an AVX-512 Intel Xeon, 2026-12-07): the main
    kernel's profiled time, the direct 8x16 against the Winograd 8x16w (a /tmp script,
    medians of 40: E 95 against 123 us; ``python benchmarks/tile_sweep.py --devices 2:0
    --dtypes float32 --workloads E --shapes 32,8,8,16,4,3,2,SAME --tiles 8x16w 8x16 8x4
    --rounds 21 --kernel`` since: E 99 against 120, 16->4 54 against 69), 32x16x16
    16->16 216 against 286, 1x64x64 16->16 93 against 107, 1x128x128 16->16 rate 4 472
    against 739, fewer channels (8x8, 8x4, 8x1 against 8x16w) 1x16x16 32->1, 4, 8 16
    against 20, 32x8x8 16->4 53 against 73, 1x64x64 32->4 161 against 222, 16->8 75
    against 103; 32x8x8 32->32 251 against 317 (so the rule may reach further; not
    measured on the host API), 64->64 873 against 807. The host API interleaved with
    onnxruntime's Conv form (``python benchmarks/conv_form_ratio.py --devices 2:0
    --workloads C E --rounds 61``, two pairs, the direct kernel / the Winograd kernel,
    ms): E 0.281 / 0.311 and 0.266 / 0.308, C 1.538 / 1.541 and 1.277 / 1.605. Debian's
    PoCL 3.1 keeps the Winograd kernel: on that Xeon the kernels tied (E 58 / 49 and
    106 / 116 us, C 744 / 868 and 1164 / 1002), and its host calls ran C and E faster
    with it (:func:`default_for`)."""
    return ((pocl_narrow(device) or _pocl_3_0(device)) and np.dtype(dtype) != np.float16
            and cout <= 16)


def _pocl_3_0(device: cl.Device) -> bool:
    """PoCL 3.0, the release ``pocl-binary-distribution`` installs from PyPI (driver
    version ``3.0-rc2``); Debian's is 3.1."""
    driver = facts(device).driver.strip()
    return is_pocl(device) and (driver == "3.0" or driver.startswith(("3.0-", "3.0.", "3.0+")))


def gpu_only(device: cl.Device) -> bool:
    """A GPU that is not also a CPU (Oclgrind says it is both): it takes :func:`gpu_tile`
    and the direct kernel's weights in one row (:func:`atrous_cl.launch.blocks_weights`)."""
    kind = facts(device).type
    return bool(kind & cl.device_type.GPU and not kind & cl.device_type.CPU)


def default_for(device: cl.Device, dtype, args) -> Tile:
    """The untuned tile of a problem (``args``: :class:`atrous_cl.validation.TransposeArgs`):
    on a CPU, the Winograd kernel's (:func:`winograd_tile`) where it runs with at most
    half the direct sum's multiplies (3x3 filters, 6x6, 9x9, 3x6: one 3x3 part per 9
    taps or fewer), each phase has two rows and columns or more (a 2x2 block), its
    blocks on the problem's phases take at most 0.8 of the direct kernel's multiplies
    (:func:`winograd_pays`: not at rates large against the image), and
    :func:`winograd_enabled`, unless PoCL runs the direct kernel faster (:func:`_pocl_direct`:
    16 output channels or fewer) or Intel's runtime the direct 8x1 tile (3
    output channels or fewer in float32, 2 in float64; float16 keeps Winograd: 3x3 filters,
    1x256x256 64->1, 2, 3 rate 2, float32, 8x1 took 0.54, 0.65, 0.90 of the Winograd
    tile's time, 64->4 1.04; float64 64->1, 2: 0.58, 0.54); else :func:`default_tile`,
    whose 4 pixels of two 256-bit vectors become 5 where the row allows
    (:data:`FIVE_PIXELS_WITHIN`).

    Host API, back to back, the Winograd tile's time over the direct default's
    (``python benchmarks/tile_ab.py DEVICE --workloads ... --tiles ...``, 2026-12-04
    01:50-02:40 UTC, 7-11 rounds): Intel's runtime float32 A 0.56, B 0.65, C 0.76, E
    0.80, float64 (8 doubles a vector) A 0.61-0.66, B 0.65-0.69, C 0.65; Debian's PoCL
    3.1 A 0.67, B 0.66, C 0.73, E 0.91. float16, as stored, then runs about as fast as
    float32 (``python benchmarks/dtype_speed.py 2:0 --workloads A B C``: 1.01, 0.97, 0.84
    of float32's time). Tiles of 8 blocks were the fastest or within 3% of it against 4, 12 and 16.
    5x5 (D: four parts, 64 multiplies for 100, 16 output channels) ran 1.22x (Intel)
    and 1.12x (PoCL) the direct kernel's time: one channel vector leaves the Winograd
    products a load per multiply-add, where the direct kernel's window shares its loads
    among the taps. ``atrous-cl tune`` tries Winograd tiles wherever
    :func:`winograd_parts` allows them. On a GPU (not also a CPU, as Oclgrind calls
    itself): :func:`gpu_tile`.
    """
    kh, kw, cout, cin = args.filters_shape
    _, oh, ow, _ = args.output_shape
    if gpu_only(device):
        return gpu_tile(args)
    kind = facts(device).type
    parts = winograd_parts(kh, kw)
    direct = default_tile(device, dtype, cout)
    if (winograd_enabled() and kind & cl.device_type.CPU
            and not _intel_direct(device, dtype, cout)
            and not _pocl_direct(device, dtype, cout)
            and parts is not None and 8 * parts <= kh * kw
            and min(-(-oh // args.rate), -(-ow // args.rate)) >= 2):
        tile = winograd_tile(device, dtype, args.filters_shape)
        if tile is not None and winograd_pays(args, tile, direct):
            return tile
    if direct == _NARROW_DIRECT._replace(channels=direct.channels):
        return _five_pixels(args, direct)
    if (direct.vectors > 1 and direct.pixels > _ROWS_PIXELS
            and consecutive_pixels(args, direct, _kernel_dilation(args))):
        return direct._replace(pixels=_ROWS_PIXELS)
    return direct


#: Pixels of a default tile of several 512-bit vectors where the direct kernel runs
#: consecutive columns (``atrous_conv2d_transpose_rows``, :func:`direct_columns`): 8x16x2's
#: sixteen accumulator vectors there ran 1.2-2.3x slower than 4x16x2 on Intel's runtime on
#: an AMD Zen 4 (AVX-512 on 256-bit units), where phase tiles run 8x16x2 as fast as 8x16.
#: Kernels only, 8x16x2 / 4x16x2 / 8x16 ms (a ``/tmp`` script timing ``launch.transpose``
#: on device arrays, the three tiles in turn, 8x16x2 last, medians of 15, 2026-12-07):
#: 1x33x33 64->64 rate 2 0.90 / 0.41 / 0.50, rate 12 0.63 / 0.29 / 0.34; 128->128 3.40 /
#: 2.94 / 2.96, 2.34 / 2.00 / 2.32; 256->256 13.6 / 6.42 / 6.78, 9.71 / 6.22 / 4.90;
#: 512->512 53.4 / 24.2 / 26.1, 36.7 / 16.4 / 18.8; 1x64x64 rate 12, 64 to 512 channels:
#: 2.52 / 1.13 / 1.22, 9.41 / 6.38 / 4.62, 37.4 / 17.2 / 17.9, 150 / 68.2 / 71.4 (with
#: 8x16x2 first, 1.4-4.2x). Debian's PoCL 3.1 there (``python benchmarks/tile_sweep.py
#: --devices 1:0 --shapes ... --tiles 8x16x2 4x16x2 8x16 4x16``): 4x16x2 0.52-0.97 of
#: 8x16x2's time on 1x33x33 and 1x65x65 at 64-256 channels, rates 2-12. The accumulators
#: are the cause, not the sum: the kernel built without its branch for a border tap with a
#: non-finite weight (a select per accumulator, never taken with finite weights) ran
#: 8x16x2 at 8x16's speed, and that branch rewritten per pixel halved the loss.
#: Where 4 pixels then run phase tiles instead (the count of :func:`direct_columns`
#: flips), 4x16x2 is still the faster: ``python benchmarks/tile_sweep.py --devices 1:0
#: --shapes 1,17,17,64,64,5,1,SAME 1,33,33,128,128,4,3,SAME --tiles 8x16x2 4x16x2 8x16
#: --rounds 7``, Intel's runtime, 4x16x2 0.46 and 0.50 of 8x16x2's time.
_ROWS_PIXELS = 4


def consecutive_pixels(args, tile: Tile, dilation) -> bool:
    """Whether the direct kernel runs ``tile`` on consecutive output columns
    (``atrous_conv2d_transpose_rows``) rather than one phase's, with the kernel's
    ``dilation`` (:func:`atrous_cl.launch.kernel_dilation`; None: no tap lands, nothing
    runs): :func:`direct_columns`."""
    if dilation is None:
        return False
    return direct_columns(args.output_shape[2], args.value_shape[2], args.filters_shape[1],
                          dilation[2], dilation[3], tile.pixels)[1]


#: :func:`default_for` takes 5 pixels of two 256-bit vectors rather than 4
#: (:data:`_NARROW_DIRECT`) where they compute at most this many times 4's pixel-taps
#: along a row (:func:`direct_columns`: a phase of 32 columns takes 35 in tiles of 5)
#: in the same kernel (phase tiles or consecutive columns, as 4 would).
#: Ten accumulator registers of AVX2's 16 rather than 8, a broadcast input feeding 10
#: multiply-adds; 12 (6 pixels) spilled, 1.5-2.6x the time. Kernels only, 5 pixels' time
#: over 4's (``python benchmarks/tile_sweep.py --devices 1:0 2:0 --dtypes ... --workloads
#: C D --shapes ... --tiles 4x8x2 5x8x2 --rounds 5``, 2026-12-06, Intel's runtime /
#: PyPI's PoCL): float32 5x5 32->32 0.88 / 0.89-0.93, 7x7 16->16 rate 3 0.91-0.93 /
#: 0.86-0.90, 4x4 0.91 / 0.91, 6x6 48->32 0.95 / 0.90, 1x33x33 2048->256 rate 6 0.93-0.95 /
#: 0.92-0.94, 1x65x65 1024->256 rate 12 0.98 / 0.93, 1x64x64 768->768 1.00 / 0.87; D
#: 0.89-0.92 / about 0.91 (PoCL's main kernel alone, three processes each: its launch layer
#: swung 0.51-1.30 between processes); C, whose phases are 32 columns, 1.00-1.01 /
#: 1.01-1.08; float64 (5x4x2 over 4x4x2) 0.87-1.01, float16 0.87-1.01.
FIVE_PIXELS_WITHIN = 1.05


def _kernel_dilation(args) -> tuple[int, int, int, int] | None:
    """The direct kernel's ``(rate_h, crop_top, rate_w, crop_left)`` for a problem
    (:func:`atrous_cl.geometry.kernel_dilations`), None where no tap lands in it."""
    kh, kw, _, _ = args.filters_shape
    (_, oh, ow, _), (_, h, w, _) = args.output_shape, args.value_shape
    return geometry.kernel_dilations((kh, kw), args.rate, args.pads, (oh, ow), (h, w))


def _five_pixels(args, tile: Tile) -> Tile:
    """``tile`` (4 pixels) with 5 pixels where :data:`FIVE_PIXELS_WITHIN` allows."""
    dilation = _kernel_dilation(args)
    if dilation is None:
        return tile
    _, _, rate_w, crop_left = dilation
    kw, ow, w = args.filters_shape[1], args.output_shape[2], args.value_shape[2]
    four, consecutive = direct_columns(ow, w, kw, rate_w, crop_left, tile.pixels)
    five, consecutive_five = direct_columns(ow, w, kw, rate_w, crop_left, 5)
    # The same kernel either way (the two tilings were measured apart), and a tile
    # no wider than a phase's columns (or the row) is one of 4 or fewer (launch.plan).
    room = ow if consecutive else -(-ow // rate_w)
    return (tile._replace(pixels=5)
            if consecutive == consecutive_five and room >= 5
            and five <= FIVE_PIXELS_WITHIN * four else tile)


#: A work-group of the Winograd kernel reads the transformed filters of its output channels
#: (:func:`winograd_cout_group`) for a few 2x2 blocks (16 multiply-adds per 4 bytes and
#: block): at most this many bytes of them, so that they stay in the cache for the
#: work-groups after it (the groups of one set of channels run one after another). With all
#: the channels in one work-group, transformed filters past the last-level cache (32 MiB on
#: this project's Zen 3) left the kernel waiting on memory. Kernels only, time over the
#: direct kernel's, float32, 4x8x3w, all the channels in a group -> groups within 12, 6 and
#: 3 MiB (``python benchmarks/winograd_groups.py --device D --shapes ...``, 3 rounds, its
#: first version, 2026-12-06, Intel's runtime / PyPI's PoCL; Intel then had too little local
#: memory from 1024 input channels): 1x64x64 768->768 rate 2 (36 MiB) PoCL 1.06 -> 0.43,
#: 0.43, 0.48 (Intel, groups of 48, 96, 192 and 384 channels: 1.33 -> 0.62, 0.53, 0.53,
#: 0.79); 1x32x32 768->768 rate 1 1.31 -> 0.86, 0.64, 0.64 / 1.22 -> 0.79, 0.62, 0.57;
#: 1x64x64 512->1024 1.19 -> 0.66, 0.54, 0.54 / 1.07 -> 0.47, 0.48, 0.51; 1x32x32 1024->512
#: rate 1 PoCL 1.30 -> 0.93, 0.78, 0.82; 1x33x33 1024->1024 rate 6 PoCL 2.17 -> 0.95, 0.91,
#: 1.06; 1x33x33 768->768 rate 6 2.15 -> 0.86, 0.92, 0.83 / 1.99 -> 0.95, 0.88, 0.90;
#: 1x64x64 512->512 (16.5 MiB) 0.63 -> 0.59, 0.56, 0.60 / 0.58 -> 0.54, 0.56, 0.60; 384->384
#: (9.3 MiB) PoCL 0.53 -> 0.53, 0.54, 0.55. float64 (4x4x3w, 6 MiB), PoCL: 1x32x32 768->768
#: rate 1 1.27 -> 0.65, 1x64x64 512->512 1.04 -> 0.58; float16 1x32x32 768->768 1.32 -> 0.59
#: / 1.21 -> 0.71.
WINOGRAD_GROUP_BYTES = 6 << 20

#: ... unless all of them take at most this: each group recomputes the input transform,
#: which cost more than the cache saved below it. Kernels only, groups within 6 MiB
#: over one group's time (the same script, ``--mib 1000 6 --rounds 7``):
#: 1x64x64 384->384 (9.3 MiB) 1.04 / 1.02, 2x32x32 448->448 (12.5 MiB) 1.07 / 1.04,
#: 1x48x48 320->320 (6.6 MiB) 1.01 / 1.08; 1x64x64 512->512 (16.5 MiB) 0.89 / 0.97.
WINOGRAD_ONE_GROUP_BYTES = 16 << 20

#: Intel's CPU runtime on an Intel CPU keeps a group's transformed filters within this,
#: however few there are (:func:`winograd_group_bytes`): on a 2-core Intel Xeon (family 6
#: model 207; 2 MiB of L2 a core, which the runtime reports as its cache) groups within
#: 1 MiB ran in 0.44-0.81 of one group's time from 256 channels, where one group had run
#: the Winograd kernel 0.56-2.04x the direct kernel's time. Kernels only, the Winograd
#: kernel's time over the direct one's, one group -> groups within 2 and 1 MiB (``python
#: benchmarks/winograd_groups.py --device 1:0 --mib 1000 2 1 --rounds 3 --shapes ...``,
#: 2026-12-07 19:39-19:40 UTC): 1x64x64 256->256 rate 2 1.07 -> 0.86, 0.87; 1x33x33
#: 256->256 rate 6 2.04 -> 1.58, 1.12; 1x65x65 rate 6 0.56 -> 0.45, 0.35; rate 12 1.01 ->
#: 0.72, 0.44; 1x33x33 rate 1 1.24 -> 0.98, 0.98; 1x64x64 512->512 rate 2 1.02 -> 0.95,
#: 0.74; 1x32x32 768->768 rate 1 1.23 -> 1.08, 0.97. PyPI's PoCL on the same machine
#: keeps the limits above: there 512->512 ran 0.62 in one group and 0.83 within 1 MiB.
INTEL_HOST_GROUP_BYTES = 1 << 20


def _even_parts(n: int, most: int) -> int:
    """The size of the parts that cut ``n`` units into as few parts of at most ``most``
    (at least 1) as that takes, all of one size but the last, as small as that size can be."""
    return -(-n // -(-n // max(1, most)))


def winograd_group_bytes(device: cl.Device | None) -> tuple[int, int]:
    """The limits of :func:`winograd_cout_group` on ``device``: (a group's transformed
    filters, all of them in one group), :data:`WINOGRAD_GROUP_BYTES` and
    :data:`WINOGRAD_ONE_GROUP_BYTES`, neither past :data:`INTEL_HOST_GROUP_BYTES` on
    Intel's CPU runtime on an Intel CPU. None: the first two."""
    if device is not None and is_intel_cpu(device) and _host_intel():
        return (min(WINOGRAD_GROUP_BYTES, INTEL_HOST_GROUP_BYTES),
                min(WINOGRAD_ONE_GROUP_BYTES, INTEL_HOST_GROUP_BYTES))
    return WINOGRAD_GROUP_BYTES, WINOGRAD_ONE_GROUP_BYTES


def winograd_cout_group(filters_shape, tile: Tile, dtype, device: cl.Device | None = None) -> int:
    """Output channels per work-group of the Winograd kernel with ``tile``: every one
    (padded to whole register tiles, :meth:`Tile.padded_channels`) where their
    transformed filters (:func:`winograd_filter_bytes`) take at most
    :data:`WINOGRAD_ONE_GROUP_BYTES`; else as few groups as keep each within
    :data:`WINOGRAD_GROUP_BYTES` (a register tile's channels at least), of whole
    register tiles, all of one size but the last (:func:`_even_parts`); on ``device``,
    :func:`winograd_group_bytes`'s limits. Each group
    recomputes the input transform, about a quarter of a register tile's products (16
    loads and 32 adds per input vector against 16 multiply-adds per vector of the tile's)."""
    kh, kw, cout, cin = filters_shape
    group_bytes, one_group_bytes = winograd_group_bytes(device)
    step = tile.channels * tile.vectors
    steps = tile.padded_channels(cout) // step
    if winograd_filter_bytes(filters_shape, tile, dtype) <= one_group_bytes:
        return steps * step
    most = group_bytes // winograd_filter_bytes((kh, kw, step, cin), tile, dtype)
    return _even_parts(steps, most) * step


def winograd_filter_bytes(filters_shape, tile: Tile, dtype) -> int:
    """Bytes of the Winograd kernel's transformed filters for ``tile``: 16 per 3x3 part,
    input channel and (padded) output channel, in ``dtype``'s accumulation type, as
    ``repack_filters`` stores them."""
    kh, kw, cout, cin = filters_shape
    return 16 * winograd_parts(kh, kw) * cin * tile.padded_channels(cout) * acc_itemsize(dtype)


class WinogradSplit(NamedTuple):
    """How a work-group of the Winograd kernel divides its work (:func:`winograd_split`):
    ``chunk`` input channels transformed at once (all of them, rounded up to a
    vector, for one chunk) and ``group`` output channels computed."""

    chunk: int
    group: int


def winograd_split(filters_shape, tile: Tile, dtype, local_mem: int,
                   device: cl.Device | None = None) -> WinogradSplit | None:
    """The :class:`WinogradSplit` of the Winograd kernel with ``tile`` on a device with
    ``local_mem`` bytes of local memory, or None where not even one vector of input
    channels and one register tile fit it.

    The group is :func:`winograd_cout_group`'s (on ``device``). Every input channel in one chunk where
    their transforms fit the local memory with one register tile's products; else
    chunks as large as fit beside the products of the whole group, which add up from
    chunk to chunk (smaller groups of equal size but the last where those would not
    leave room for one vector), in as few chunks as that takes, of equal size but the
    last. Chunks only where they must be: where all the transforms fit, chunks of 32,
    64 and 128 channels (8-32 KiB of transforms, in the first-level cache) took
    1.26-1.66, 1.18-1.38 and 1.02-1.16 of one chunk's time (kernels only, 4x8x3w, 1x32x32
    128->128 and 256->256, 1x64x64 512->512 and 768->768 rate 2, Intel's runtime and
    PyPI's PoCL: ``python benchmarks/winograd_groups.py --device D --mib 6 --chunk 0 32
    64 128 --shapes ...``, 2026-12-06)."""
    kh, kw, cout, cin = filters_shape
    parts = winograd_parts(kh, kw)
    slots = local_mem // (acc_itemsize(dtype) * 16 * tile.pixels)  # channels of V or M
    step = tile.channels * tile.vectors
    vectors = -(-cin // tile.channels)  # of input channels
    group = winograd_cout_group(filters_shape, tile, dtype, device)
    if parts * vectors * tile.channels + step <= slots:
        return WinogradSplit(vectors * tile.channels, group)
    most = (slots - parts * tile.channels) // step  # register tiles the products may take
    if most < 1:
        return None
    if group > most * step:
        group = _even_parts(tile.padded_channels(cout) // step, most) * step
    room = (slots - group) // (parts * tile.channels)  # vectors of a chunk
    return WinogradSplit(_even_parts(vectors, room) * tile.channels, group)


#: The direct kernel takes tiles of consecutive output columns where they compute at most
#: this share of its phase tiles' pixel-taps (:func:`direct_columns`).
CONSECUTIVE_BELOW = 0.9


def direct_columns(ow: int, w: int, kw: int, rate: int, crop: int,
                   pixels: int) -> tuple[int, bool]:
    """``(pixel_taps, consecutive)``: the pixel-taps the direct kernel computes along an
    output row of ``ow`` columns, reading ``w``, with tiles of ``pixels`` columns, and
    whether those are consecutive columns (``atrous_conv2d_transpose_rows``) rather
    than one phase's, ``rate`` apart (:func:`atrous_cl.geometry.phase_tile_taps`,
    :func:`~atrous_cl.geometry.consecutive_tile_taps`; ``rate`` and ``crop``: the
    kernel's, :func:`atrous_cl.launch.kernel_dilation`). Consecutive where they compute
    at most :data:`CONSECUTIVE_BELOW` of the phase tiles' taps: where a rate is large
    against the image, so a phase has few columns and most of its window's taps read
    outside the image, which consecutive tiles skip. Kernels alone (a profiling queue,
    Intel's runtime, 4x8x2): 1x33x33 256->256 rate 18 SAME 19.1 -> 6.4 ms, 1x65x65 rate
    12 70.4 -> 43.5; at equal work the two ran in 0.88-1.08 of each other's time
    (``docs/performance.md``)."""
    phase = geometry.phase_tile_taps(ow, kw, rate, pixels)
    consecutive = geometry.consecutive_tile_taps(ow, w, kw, rate, crop, pixels)
    return (consecutive, True) if consecutive <= CONSECUTIVE_BELOW * phase else (phase, False)


#: The Winograd kernel is the default where it computes at most this share of the
#: direct kernel's multiplies (:func:`winograd_pays`), ...
WINOGRAD_BELOW = 0.8

#: ... or of this where there are more input channels than :data:`WINOGRAD_WIDE_INPUTS`.
#: There the direct kernel won where the count gave 0.63-0.82 (DeepLab's ASPP shapes),
#: the Winograd kernel where it gave 0.45. Kernels only, the Winograd kernel's time over
#: the direct one's (``python benchmarks/winograd_groups.py --device D --mib 6 --shapes
#: ...``, 3-5 rounds, 2026-12-06, Intel's runtime / PyPI's PoCL), with the count:
#: 1x33x33 1024->256 rate 6 (0.63) 1.09-1.18 / 1.12, 2048->256 (0.63) 1.12-1.22 / 1.16,
#: 1x65x65 2048->256 rate 6 (0.82) 1.02 / 1.20, rate 12 (0.69) 1.11 / 1.05, 1024->256
#: rate 6 1.05; 1x32x32 1024->512 rate 1 (0.45) 0.74-0.76, 1x64x64 1024->256 rate 2 (0.45)
#: 0.61-0.64, 1x32x32 2048->512 rate 1 (0.45) 0.73 (Intel, in chunks: :func:`winograd_split`);
#: up to 768 input channels at 0.63: 1x33x33 768->768 rate 6 0.84 / 0.91, 512->256 0.89.
WINOGRAD_WIDE_BELOW = 0.5

#: See :data:`WINOGRAD_WIDE_BELOW`.
WINOGRAD_WIDE_INPUTS = 768


def winograd_pays(args, tile: Tile, direct: Tile) -> bool:
    """Whether the Winograd ``tile`` beats the ``direct`` one on a problem, by a count of
    multiplies per input and output channel: the Winograd kernel's 16 per 2x2 block and
    3x3 part, over every block of its groups of ``tile.pixels`` along a phase's row
    (:func:`atrous_cl.geometry.winograd_blocks`), against the direct kernel's terms of
    live rows times the pixel-taps its tiles compute along a row (:func:`direct_columns`):
    at most :data:`WINOGRAD_BELOW` of them (:data:`WINOGRAD_WIDE_BELOW` for more than
    :data:`WINOGRAD_WIDE_INPUTS` input channels), and groups of two blocks or more along a row
    (groups of one left the kernel reading its transformed filters for every block: 2.6x
    the direct kernel's time on 1x33x33 256->256 rate 18 where the count gave 1.3x).
    Where a rate is large against the image, so phases have few rows and columns, the
    Winograd kernel's blocks run past them and it transforms taps that read outside the
    image, which the direct kernel skips: 1x33x33 256->256 rate 12 SAME 1.75x the
    direct kernel's time, rate 6 0.73, rate 1 0.59 (Intel's runtime; the count: 1.64,
    0.69, 0.58; ``docs/performance.md``)."""
    kh, kw, _, _ = args.filters_shape
    (_, oh, ow, _), (_, h, w, _) = args.output_shape, args.value_shape
    dilation = _kernel_dilation(args)
    if dilation is None:
        return False
    rate_h, crop_top, rate_w, crop_left = dilation
    if min(tile.pixels, geometry.phase_blocks(ow, rate_w)) < 2:
        return False
    winograd = (16 * winograd_parts(kh, kw) * geometry.winograd_blocks(oh, rate_h, 1)
                * geometry.winograd_blocks(ow, rate_w, tile.pixels))
    along, _ = direct_columns(ow, w, kw, rate_w, crop_left, direct.pixels)
    direct = geometry.live_pixel_taps(oh, h, kh, rate_h, crop_top) * along
    below = WINOGRAD_BELOW if args.filters_shape[3] <= WINOGRAD_WIDE_INPUTS else WINOGRAD_WIDE_BELOW
    return winograd <= below * direct


#: Outputs from which a GPU's untuned tile takes two output channels where there are 64
#: to 127 of them (:func:`gpu_tile`).
GPU_TWO_CHANNELS_FROM = 1 << 21


def gpu_tile(args) -> Tile:
    """The untuned tile of a problem on a GPU: 4 output pixels a work-item (16 for filters
    5 or more taps wide, whose pixels share more input columns), in one output channel;
    4 channels from 128 of them, 2 from 64 where the output has
    :data:`GPU_TWO_CHANNELS_FROM` elements or more.

    Kernels only, back to back, on an NVIDIA H200 (OpenCL 3.0, driver 580.159.04;
    ``python benchmarks/gpu_sweep.py``, 3 rounds, 2026-12-04), this tile's time over the
    fastest register tile's (which in brackets), and 4x2's (the default before): A 1.00
    (4x1; 4x2 1.14), B 1.00 (4x4; 1.55), C 1.07 (8x1; 1.33), D 1.00 (16x1; 1.55),
    1x256x256 64->64 3x3 1.00 (4x2), 1x512x512 16->16 1.01 (16x1; 1.59), 2x128x128
    32->32 1.00 (4x1; 1.31); the tiny E and F take 0.048-0.055 ms with any tile (F 4x1
    1.10 of the fastest; E's 4x1 was not among its 14 fastest, which reached 0.0525 ms
    from 0.0484). Fitted on these nine problems; ``atrous-cl tune`` finds the best for
    others.
    Outputs per work-item did not decide it: 1x256x256 64->64 ran 4x4 in 1.75x 4x2's
    time, where B, with an eighth of its pixels and twice its channels, ran 4x4 fastest.
    """
    _, kw, cout, _ = args.filters_shape
    outputs = math.prod(args.output_shape)
    channels = 4 if cout >= 128 else 2 if cout >= 64 and outputs >= GPU_TWO_CHANNELS_FROM else 1
    return Tile(16 if kw >= 5 else 4, channels)


def _several_vectors(device: cl.Device, dtype) -> bool:
    """Whether register tiles of several 16-channel vectors suit the device and dtype:
    Intel's CPU runtime and PoCL with 512-bit vectors, summing in float32 (float32,
    float16). The transpose kernel then takes two (:func:`default_tile`), the filter
    gradient up to four (:func:`default_filter_grad_tile`).

    ``python benchmarks/tile_ab.py DEVICE --tiles 8x16 8x16x2 [--dtype ...]``
    (host API, 2026-12-03 23:15-23:25 UTC, 9-21 rounds): 8x16x2 over 8x16's
    time, float32, A and B (64 and 128 output channels): Intel 0.90-0.93 and
    0.89-0.92, Debian's PoCL 3.1 0.91-0.94 and 0.89-0.90; float16 on Intel
    0.91 and 0.92; float64 (two 512-bit registers a vector) 1.89 and 1.59, so
    it keeps one. 4x16x4 ran 0.96-1.08, 8x16x4 1.68-1.88 (spilled registers),
    and two vectors where the channels fill one (C, D, E: 16) 1.07-1.66.
    """
    wide = (is_intel_cpu(device) or is_pocl(device)) and not _narrow(device)
    return wide and np.dtype(dtype) != np.float64


class FilterGradTile(NamedTuple):
    """The filter gradient's work split (:mod:`atrous_cl.filter_grad`): ``tile.channels``
    output x ``gc`` input channels per work-item; rows split into chunks until there
    are about ``items`` work-items and, unless ``chunk_bytes`` is 0, until each
    chunk's rows of the two inputs take at most ``chunk_bytes``; ``xpack``: x packed by
    groups of ``gc`` input channels first, each pixel's group next to the next pixel's;
    ``cb``: with x packed, groups of ``gc`` input channels a work-item takes in turn on
    each row (:func:`_packed_groups`)."""

    tile: Tile
    gc: int
    items: int
    chunk_bytes: int
    ov: int = 1
    kt: int = 1
    xpack: bool = False
    cb: int = 1


def _packed_groups(cin: int, gc: int, xpack: bool) -> int:
    """Groups of ``gc`` input channels a work-item of a packed filter gradient takes in
    turn over each row of d (``cb``): the largest power of two up to 16 that leaves 4
    work-items or more across x's channels; 1 unpacked.

    The row of d a work-item loads from L2 for its first group is in L1 for the others
    (one group a work-item, each streamed all its rows of d from L2). ``python
    benchmarks/filter_grad_pairs.py --devices 1:0 2:0 --field cb --pairs 21 --workloads
    A B --shapes 4,16,16,256,256,3,1,SAME 2,48,48,96,48,3,2,VALID 1,96,96,32,32,3,2,SAME
    1,64,64,64,64,5,2,SAME 2,32,32,128,128,5,1,SAME`` (2026-12-05 09:21 UTC, medians of
    the pairs' ratios), this cb over 1, Intel / PyPI's PoCL: A (cb 8) 0.94 / 0.95, B (16)
    0.92 / 0.88, 256->256 (16) 0.83 / 0.83, 96->48 VALID (4) 0.88 / 1.00, 32->32 (4) 0.93
    / 0.94, 5x5 64->64 (16) 0.85 / 0.90, 5x5 128->128 (16) 0.82 / 0.87. float16
    (``--pairs 15 --workloads A B --shapes 4,16,16,256,256,3,1,SAME``): 0.98 / 0.96, 0.94
    / 0.90, 0.83 / 0.82; float64 (``--pairs 11``; PoCL's one-tap 4x8, cb 2, 4, 8): 0.90 /
    0.93, 0.82 / 0.87, 0.77 / 0.73. Fewer than 4 work-items across the channels lost
    before the rule (32->32 on PoCL at cb 8 and 16: 1.2-1.3x, ``/tmp`` sweep).
    """
    if not xpack:
        return 1
    cb = 1
    while cb < 16 and cb * 2 * 4 <= -(-cin // gc):
        cb *= 2
    return cb


#: Input (x's) and output channels from which the filter gradient reads x packed by
#: its groups of input channels (FilterGradTile.xpack) on 256-bit CPUs, in the
#: three-tap splits and PyPI's PoCL's other ones: a pixel of x then spans 2 cache
#: lines or more, of which a work-item reads a group a tap, and enough output channels
#: share the packing pass. Measured: default_filter_grad_tile.
_XPACK_FROM = 32

#: The same from which PoCL with 512-bit vectors (Debian's PoCL 3.1) packs x in its
#: 16x4x4 split (:func:`default_filter_grad_tile`).
_WIDE_POCL_XPACK_FROM = 128


def default_filter_grad_tile(device: cl.Device, dtype, cin: int, cout: int,
                             kw: int = 1, packable: bool = False) -> FilterGradTile:
    """The filter gradient's untuned split, from the transpose kernel's :func:`_platform_tile`
    (not :func:`default_tile`'s narrower choices for few output channels, unmeasured here).

    Output channels as that tile's; on Intel's CPU runtime and PoCL with
    512-bit vectors (float32 and float16), up to 4 such vectors per work-item
    and 16 // vectors input channels (a register tile of 16 vectors); else one
    vector and 16 input channels on that PoCL, that tile's pixels (8)
    elsewhere. GPUs get about 4096 work-items. On CPUs the rows are split by
    bytes instead, into chunks whose rows of both inputs take 512 KiB at most
    (a core's L2 holds them): each chunk costs a partial sum of the whole
    filter gradient, and a CPU's few cores need few work-items (4096 split E,
    32x8x8 16->16, into 128 chunks of 16 pixels) but chunks the caches hold (B,
    8x32x32 128->128, ran in 4 chunks of 1 MiB, now 16).

    Measured on a 2-core AMD EPYC (``python benchmarks/filter_grad_ab.py
    --devices 2:0 1:0 --workloads A B C D E --bc 16 --gc 4 8 16 --ov 1 2 4
    --items 1 --kib 512 --rounds 9``, the transpose vjp's filter gradient,
    float32, kernels only, 2026-12-03 22:40 UTC): this split's time over one
    vector's (8 input channels on Intel, 16 on PoCL), A-C: Intel 0.73 (4x4)
    0.90 (4x4) 0.85 (8x2), Debian's PoCL 3.1 0.78 (4x4) 0.78 (4x4) 0.75 (8x2);
    D and E have one vector. More vectors than the output channels fill cost
    1.6-13x (D at 2 or 4). Before, the row split: the time of the split
    before it (8 input channels, 4096 work-items) over this one's, A-E: Intel
    1.08 1.19 1.19 1.01 1.77, Debian's PoCL 3.1 1.39 1.15 1.34 1.02 1.83. On
    Intel, 512 KiB was the fastest chunk bound tried (128 KiB-2 MiB,
    ``--items 1 --kib ...``) or within 1.02x of it on A-E, and one vector of
    16 input channels ran 1.2-2x slower than 8; on PoCL one vector of 8 input
    channels ran A and B 1.1-1.6x slower than 16. float64 keeps one vector
    (unmeasured with more).

    With 256-bit vectors (:func:`_narrow`: PyPI's PoCL, Intel's runtime on the
    Zen 3), summing in float32, at least 16 output channels and a filter
    width ``kw`` that 3 divides, a work-item takes three taps of a filter row
    (``kt`` 3, one load of the cotangent serves them) x 2 input channels x one
    16-channel vector: ``python benchmarks/filter_grad_ab.py --devices 1:0 2:0
    --workloads A B C E --shapes 1,64,64,32,64,3,3,SAME 2,48,48,96,48,3,2,VALID
    4,16,16,256,256,3,1,SAME --bc 16 8 --gc 1 2 3 --kt 3 --items 1 --kib 512
    --rounds 9`` (2026-12-05, about 02:20 UTC), its time over the split before
    (16x8 Intel, 8x8 PoCL): A 0.82 / 0.75, B 0.90 / 0.83, C 0.81 / 0.81, the
    two shapes after 0.80 / 0.77 and 0.77 / 0.80, 256->256 at rate 1 1.08 /
    0.82, E 1.03 / 1.26 (a 0.1-0.3 ms call; Intel / PoCL). 2 input channels
    beat 1 and 3 on all but the last shape; 8-channel vectors ran 1.04-1.7x.
    Taps of 5 (D) were left then (``--kt 5`` with 2 input channels: 0.86 / 0.94 of
    the split before, where Intel's 16x4 ran 0.77); one input channel took them later
    (below). float64 on Intel's runtime takes the
    same two registers a vector, 8 channels (at least 8 output channels): the
    same command with ``--dtype float64 --bc 4 8 --gc 2 4 --rounds 5`` (02:50
    UTC) ran A 0.33, B 0.37, C 0.34, the three shapes 0.36, 1.08 (8x4x1x3 0.86)
    and 0.41, 16->8 0.81, E 1.01 of its 4x8 before. On PyPI's PoCL float64
    keeps its 4x8: 4x4x3 ran 0.79-0.90 on A-C and three shapes but E 1.65, and
    8-wide doubles are what it builds into empty programs for the op's kernel.

    That split (float64's on Intel's runtime too, and PyPI's PoCL's every split) reads x
    packed by its groups of input channels first (``xpack``) from 32 input and 32 output
    channels: one pass copies x into rows of every column a tap reads,
    TF's zeros outside x (widening float16 as it goes), so a tap's pixels lie a group of
    channels apart instead of a pixel of x (a cache line or more each from 16 channels), and every tap
    runs the loop over all of d's columns, with no fringe columns or padding terms of
    its own (38% of the kernel's samples on PyPI's PoCL for B, ``perf annotate``).
    ``python benchmarks/filter_grad_pairs.py --devices 1:0 2:0 --workloads A B C E
    --shapes 4,16,16,256,256,3,1,SAME 2,48,48,96,48,3,2,VALID 1,96,96,32,32,3,2,SAME
    1,64,64,16,32,3,2,SAME`` (2026-12-05 06:11 UTC, medians of 41 pairs), time with
    over without, Intel / PyPI's PoCL: A 0.88 / 0.88, B 0.85 / 0.78, 256->256 0.71 /
    0.71, 96->48 VALID 0.86 / 0.93, 32->32 0.91 / 0.94; below the bounds C (16 input
    channels) 1.11 / 1.06, E 1.23 / 0.94, 32->16 1.22 / 1.19. ``--workloads A B C
    --shapes 1,96,96,32,32,3,2,SAME 1,64,64,16,32,3,2,SAME --dtype float16 --pairs
    21``: A 0.88 / 0.79, B 0.81 / 0.76, 32->32 0.87 / 0.89; 32->16 0.87 / 1.17, C 0.95 /
    0.98. float64 (``--workloads A B C --shapes 1,96,96,32,32,3,2,SAME
    1,64,64,16,32,3,2,SAME --dtype float64 --pairs 15``; Intel's three-tap split, PyPI's
    PoCL its one-tap 4x8): A 0.82 / 0.91, B 0.77 / 0.88, 32->32 0.95 / 0.84, C 0.92 /
    0.85, 32->16 1.00 / 0.97. The one-tap float32 splits (``--workloads D --shapes
    1,64,64,64,64,5,2,SAME 2,32,32,32,48,2,3,SAME 1,96,96,32,32,4,2,SAME
    2,32,32,128,128,5,1,SAME --pairs 21``): PyPI's PoCL (8x8) 0.78, 1.22 (2x2 taps, a
    0.4 ms call: :data:`atrous_cl.filter_grad.PACK_FROM_MACS`), 0.77, 0.74, D (16
    channels) 1.03; Intel's 16x8 1.04, 1.27, 1.05, 1.00, D 1.10, so it is not packed.
    Where PoCL's compiler cannot build 16-float vectors (:func:`atrous_cl.facts.max_vector_bytes`:
    PyPI's PoCL 3.0 on AMD Zen 4), these splits take two 8-float vectors instead (``ov`` 2):
    ``python benchmarks/filter_grad_ab.py --devices 2:0 --workloads A B C D E --bc 8 --gc 8
    --ov 1 --kt 1 --items 1 --kib 512 --xpack --cb 1 2 4 --rounds 5`` (2026-12-07 02:16 UTC),
    the split before's time (8x8, x packed where it packed) over this one's: A 1.20, B 1.03,
    C 1.19, D 1.13, but E 0.85 (a 0.3 ms call, as E's 1.26 on the Zen 3 above).
    PoCL with 512-bit vectors (Debian's PoCL 3.1) packs x in its own splits (16x4x4,
    float64's 16x16x1) from 128 input and output channels (:data:`_WIDE_POCL_XPACK_FROM`),
    its groups in turn (``cb``). ``python benchmarks/filter_grad_pairs.py --devices 1:0
    --field xpack --pairs 21 --workloads A B --shapes ...`` (AMD Zen 4, 2026-12-07 07:00
    UTC), packed over unpacked: B 0.89, 5x5 128->128 on 1x64x64 rate 2 0.81 and on 2x32x32
    rate 1 0.84, 256->256 on 1x64x64 rate 2 0.65 and on 4x16x16 rate 1 0.80, DeepLab's
    1x33x33 256->256 rate 12 0.81, 512->512 0.79, 2048->256 0.66, and 1x65x65 2048->256
    rate 6 0.16 (1690 ms unpacked, 274 packed: the 2048-channel pixels a cache line each
    for 4 channels); float64 (``--pairs 11``) B 0.76, 0.84, 0.93, 2048->256 rate 12 0.47;
    float16 0.89, 0.71, 0.66, 0.54. At 64 channels (A) groups of 4 or 16 in turn ran
    0.99-1.12x unpacked in two runs of ``filter_grad_ab.py ... --xpack --cb 2 4 16``.
    ``packable``: packing pays for the problem (:func:`atrous_cl.filter_grad.layout`
    decides: rows at most twice x's, 2**26 multiply-adds or more); without it nothing
    is packed.

    Filter widths that 5 divides take five taps of a row x one input channel x one
    16-channel vector on the same CPUs (float32 sums, 16 output channels or more) with
    x packed, or with x's pixels one cache line or less (16 channels or fewer; with
    more, unpacked, its taps read 5 lines a pixel): ``python
    benchmarks/filter_grad_ab.py --devices 1:0 2:0 --workloads D --shapes
    1,64,64,64,64,5,2,SAME 2,32,32,48,64,5,1,VALID 1,64,64,16,32,5,3,SAME --bc 16 --gc 1
    --kt 5 --items 1 --kib 512 --xpack --rounds 15`` (2026-12-05 07:17 UTC), time over
    the split before (16x8 Intel, 8x8 PoCL, each packed where it packs), Intel / PoCL:
    D (unpacked) 0.79 / 0.75, 64->64 0.72 / 0.92, 48->64 VALID 0.74 / 0.98; 5x5 128->128
    rate 1 (07:16, ``--gc 1 2 --rounds 9``) 0.82 / 0.89, 32->32 0.72 / 0.94; float16
    (``--dtype float16 --rounds 9``) D 0.77 / 0.91, 64->64 0.73 / 0.95. 32 input channels
    unpacked (the third shape, below 2**26 multiply-adds) ran 1.07 / 1.28, and two input
    channels a work-item 0.96-1.06 / 0.91-1.81 (x packed D on PoCL: 1.46-1.74).

    Intel's CPU runtime with 512-bit vectors sums float32 (and widened float16) filter
    gradients of filters whose width 3 divides, with 16 output channels or more, three taps
    of a filter row x 8 input channels x one 16-channel vector a work-item, x unpacked
    (16x8x1x3), where it took 16x4x4x1 (16x16x1x1 for one chunk from 256 x 256 channels,
    :data:`atrous_cl.filter_grad.INTEL_ONE_CHUNK_ONE_VECTOR_FROM`). AMD Zen 4, kernels only,
    the transpose vjp's filter gradient, its time over that default's (``python
    benchmarks/filter_grad_ab.py --devices 1:0 --workloads A B C E --shapes ... --bc 16 --gc 8
    --ov 1 --kt 3 --items 1 --kib 512 --xpack --rounds 3-5``, 2026-12-07 04:22-04:25 UTC): A
    0.97, B 0.90, C 1.00, E 0.87, 2x48x48 96->48 VALID 0.64, 4x16x16 256->256 rate 1 0.68,
    1x64x64 256->256 rate 2 0.80, 1x96x96 32->32 rate 2 0.95; DeepLab's 1x33x33 256->256 rate
    12 0.66, rate 18 0.68, 512->512 rate 6 0.57, 512->256 rate 12 0.86, 256->512 rate 12 0.67,
    2048->256 rate 12 0.96 (0.73 with x packed, the only shape where packing won), 1x65x65
    256->256 rate 24 0.79. float16: A 0.97, B 0.91, C 1.05, 256->256 rate 1 0.84, rate 12 0.71.
    """
    tile = _platform_tile(device, dtype, cout)._replace(vectors=1)
    cpu = facts(device).type & cl.device_type.CPU
    xpack = packable and min(cin, cout) >= _XPACK_FROM
    # 16 floats are two 256-bit vectors there: one 16-float vector where the compiler
    # builds it, else two 8-float ones (max_vector_bytes: PyPI's PoCL on AMD Zen 4).
    sixteen = cpu and _narrow(device)
    sixteen_as = ((tile._replace(channels=16), 1) if max_vector_bytes(device) is None
                  else (tile._replace(channels=8), 2))
    if (sixteen and kw % 5 == 0 and acc_itemsize(dtype) == 4 and cout >= 16
            and (xpack or cin <= 16)):
        return FilterGradTile(sixteen_as[0], 1, 1, 512 << 10, sixteen_as[1], 5, xpack,
                              _packed_groups(cin, 1, xpack))
    if cpu and _narrow(device) and kw % 3 == 0:
        if sixteen and acc_itemsize(dtype) == 4 and cout >= 16:
            return FilterGradTile(sixteen_as[0], min(2, cin), 1, 512 << 10, sixteen_as[1], 3,
                                  xpack, _packed_groups(cin, min(2, cin), xpack))
        if np.dtype(dtype) == np.float64 and _intel_narrow(device) and cout >= 8:
            return FilterGradTile(tile._replace(channels=8), min(2, cin), 1, 512 << 10, 1, 3,
                                  xpack, _packed_groups(cin, min(2, cin), xpack))
    if (is_intel_cpu(device) and not _intel_narrow(device) and acc_itemsize(dtype) == 4
            and kw % 3 == 0 and cout >= 16):
        # Three taps of a row x 8 input channels x one 16-channel vector (24 of 32 registers),
        # x as it is (see the docstring).
        return FilterGradTile(tile._replace(channels=16), min(8, cin), 1, 512 << 10, 1, 3,
                              False, 1)
    if _intel_narrow(device) and acc_itemsize(dtype) == 4:
        # One 16-channel vector, 8 input channels: on the Zen 3 of _intel_narrow
        # (filter_grad_ab.py --devices 1:0 --workloads A C D --bc 8 16 --gc 4 8 --ov 1 4,
        # 5 rounds) A 4.00 ms, C 1.71, D 8.91 against 8x8x1's 5.21, 1.91, 8.79 and the
        # 16-channel rule's 16x4x4 on A 5.86.
        tile = tile._replace(channels=min(pow2_at_least(cout), 16))
    wide = is_pocl(device) and not pocl_narrow(device)
    ov = 1
    if _several_vectors(device, dtype):
        ov = max(1, min(4, tile.padded_channels(cout) // tile.channels))  # 1 without channels
    gc = 16 // ov if ov > 1 or wide else tile.pixels
    gc = max(1, min(gc, cin))
    if cpu:
        xpack = xpack and (pocl_narrow(device)
                           or (wide and min(cin, cout) >= _WIDE_POCL_XPACK_FROM))
        return FilterGradTile(tile, gc, 1, 512 << 10, ov, 1, xpack, _packed_groups(cin, gc, xpack))
    return FilterGradTile(tile, gc, 4096, 0, ov)


def candidates(device: cl.Device, dtype, cout: int, filters_shape=None) -> list[Tile]:
    """The tiles :func:`tune` tries: pixels 2-16 x a channel vector up to the useful
    width (on Intel's runtime 16 channels, float32 and float16, unless it takes one
    channel), 12x16 on CPUs where 16 channels are tried (float32, float16), and 4 or 8
    pixels x two 16-channel vectors where :func:`default_tile` may take them (4, 5 or 8
    pixels x two 8-channel vectors on 256-bit vectors, :func:`_narrow`); with
    ``filters_shape``, the Winograd kernel's tiles of 4 and 8 blocks where it runs
    (:func:`winograd_tile`) and is not turned off (:func:`winograd_enabled`), on 256-bit
    vectors with one to four vectors a block, as many as the channels fill."""
    widest = max_channels(device, dtype, cout)
    if (is_intel_cpu(device) and acc_itemsize(dtype) == 4 and not _narrow(device)
            and not _intel_scalar(device, dtype, cout)):
        widest = 16  # a whole vector beats narrower ones there (default_tile)
    tiles = [Tile(px, ch) for px in (2, 4, 8, 16) for ch in (1, 2, 4, 8, 16)
             if ch <= widest and px * ch <= 128]
    if widest == 16 and facts(device).type & cl.device_type.CPU and acc_itemsize(dtype) == 4:
        tiles.append(Tile(12, 16))  # D: 0.81-0.87 of 8x16's kernel time on Intel, others 0.9-1.05
    if widest == 16 and cout > 16 and _several_vectors(device, dtype):
        tiles += [Tile(4, 16, 2), Tile(8, 16, 2)]
    if _narrow(device) and cout > widest:
        tiles += [Tile(4, widest, 2), Tile(5, widest, 2), Tile(8, widest, 2)]
    if filters_shape is not None and winograd_enabled():
        wino = [t for t in (winograd_tile(device, dtype, filters_shape, blocks)
                            for blocks in (4, 8)) if t is not None]
        if _narrow(device):
            # One to four vectors a block, as many as the channels fill: two and three
            # tie at 48-96 channels (_NARROW_THREE_VECTORS_ABOVE), and the defaults
            # before took one (Intel's runtime) or four (PoCL), which tuning files keep.
            for tile in list(wino):
                for vectors in range(1, min(4, -(-cout // tile.channels)) + 1):
                    other = tile._replace(vectors=vectors)
                    if other not in wino and winograd_split(filters_shape, other, dtype,
                                                            facts(device).local_mem):
                        wino.append(other)
        tiles += wino
    return tiles


#: 2x2 output blocks per work-group of the Winograd kernel (:func:`winograd_tile`).
WINOGRAD_BLOCKS = 8


def winograd_enabled() -> bool:
    """Whether the Winograd kernel may run: unless ``ATROUS_CL_WINOGRAD=0`` (or ``false``,
    ``off``, ``no``; read when a
    problem's tile is first chosen in a process): then neither the default
    (:func:`default_for`) nor a tuned entry nor ``tune`` takes it (docs/semantics.md)."""
    return os.environ.get("ATROUS_CL_WINOGRAD", "1").strip().lower() not in ("0", "false", "off", "no")


def winograd_parts(kh: int, kw: int) -> int | None:
    """How many 3x3 parts the Winograd kernel splits ``kh`` x ``kw`` filters into, where
    that saves multiplies: 16 per part and 2x2 outputs against the direct sum's 4 * kh *
    kw, at most 3/4 of them (3x3: 16 of 36, 5x5: 64 of 100, 7x7: 144 of 196; 2x2 and
    4x4 would save none, 1xN or Nx1 lose). None where it does not."""
    parts = -(-kh // 3) * -(-kw // 3)
    return parts if kh > 1 and kw > 1 and 16 * parts * 4 <= 3 * 4 * kh * kw else None


def winograd_local_bytes(tile: Tile, parts: int, split: WinogradSplit, cin: int,
                         dtype=np.float32) -> int:
    """The local memory a work-group of the Winograd kernel takes with ``tile`` and
    ``split`` for ``cin`` input channels: the input transforms of its blocks (16 per
    block, part of the filters and input channel of a chunk) and its products (16 per
    block and output channel of one register tile, or of the group where the input
    channels come in more than one chunk), in the accumulation type (float32 for
    float16)."""
    cinp = -(-cin // tile.channels) * tile.channels
    products = tile.channels * tile.vectors if split.chunk >= cinp else split.group
    return acc_itemsize(dtype) * 16 * tile.pixels * (parts * min(split.chunk, cinp) + products)


#: Output channels above which the Winograd tile on 256-bit vectors (:func:`_narrow`)
#: takes three vectors a block, not two. AMD EPYC Zen 3 (AVX2), kernels only, time of
#: 4 blocks x 3 vectors over the tile before (``python benchmarks/tile_sweep.py --devices
#: 1:0 2:0 --dtypes ... --workloads A B C E --shapes ... --tiles ...``, 7 rounds, two
#: sweeps, 2026-12-04 21:20-21:25 UTC). Intel's runtime, over one vector of 8 blocks
#: (8x8w): float32 B 0.88, 0.85; 1x64x64 128->128 0.81, 0.80; 2x32x32 256->256 0.78,
#: 0.85; 96->96 3x3 rate 3 VALID 0.78, 0.84; float16 B 0.87, 128->128 0.85; float64
#: (4x4x3w over 8x4w) B 0.79, 128->128 0.77, 256->256 0.65. PyPI's PoCL 3.0, over 4x8x4w
#: (4 vectors, its tile before from 128 channels): B 0.96, 128->128 0.95, 256->256 0.93;
#: float64 4x4x3w over 4x4x4w B 0.93, 128->128 0.91. Up to 64 channels two vectors
#: (4x8x2w) were fastest or within noise of it: Intel float32 over 8x8w A 0.81 and 0.99,
#: C 0.87, 0.90, E 0.84, 0.94, 1x128x128 64->64 0.92, 0.94, 2x64x64 32->32 0.92, 0.99,
#: 1x96x96 32->64 rate 1 0.93, 0.92, but 1x64x64 16->16 1.33 and 0.98 (three vectors
#: took 0.97-1.43 of two's time on these); float16 A 0.85 (three 0.78), C 0.94, E 0.82;
#: float64 4x4x2w over 8x4w A 0.91, C 0.79, E 0.82; PoCL float32 A, 1x128x128 64->64
#: three vectors 1.18 and 1.11 of two's time, 64->48 0.97, float64 A 1.14 and 1.17 (4x4x2w
#: took 0.94 and 1.06 of 4x4x4w's time on A in two sweeps, PoCL's tile there before, 1.01 on
#: 1x128x128 64->64, 0.79 on 32->32; 2x64x64 96->96 three vectors 0.95 of two's).
_NARROW_THREE_VECTORS_ABOVE = 64


def winograd_tile(device: cl.Device, dtype, filters_shape, blocks: int | None = None) -> Tile | None:
    """The Winograd kernel's tile of ``blocks`` 2x2 blocks for a problem, where that
    kernel runs and saves multiplies (:func:`winograd_parts`): float32, float64, or
    float16 on a CPU (GPUs load halves in hardware, and keep the direct kernel), and a
    work-group's local memory within the device's (:func:`winograd_split`); else None.
    Channel vectors as wide as :func:`_vector_width` allows, two of them for more output
    channels than one holds; with 256-bit vectors (:func:`_narrow`) in 4 blocks, and
    three of them for more than :data:`_NARROW_THREE_VECTORS_ABOVE` channels."""
    kh, kw, cout, _ = filters_shape
    dtype = np.dtype(dtype)
    cpu = bool(facts(device).type & cl.device_type.CPU)
    parts = winograd_parts(kh, kw)
    if parts is None or not (dtype != np.float16 or cpu):
        return None
    width = _vector_width(device, np.float32)
    if dtype == np.float64:  # one 512-bit register of doubles a vector: 16 spilled the tile
        width = min(_vector_width(device, np.float64), 8)
    # Two vectors where the channels fill them; with 256-bit vectors (_narrow), 4 blocks
    # of them, and 3 (12 accumulator registers of AVX2's 16) for more than 64 channels.
    vectors = 2 if cout > width else 1
    if _narrow(device) and vectors > 1 and cout > _NARROW_THREE_VECTORS_ABOVE:
        vectors = 3
    if blocks is None:
        blocks = 4 if _narrow(device) else WINOGRAD_BLOCKS
    tile = Tile(blocks, width, vectors, True)
    if winograd_split(filters_shape, tile, dtype, facts(device).local_mem) is None:
        return None
    return tile
