# SPDX-License-Identifier: Apache-2.0
"""The op on Dask arrays: images larger than one device's memory, and many images.

``atrous_conv2d_transpose`` and ``atrous_conv2d`` here take a lazy
``dask.array.Array`` in NHWC, chunked along batch, height and width, and return
a lazy ``dask.array.Array`` whose every element equals the single call's. They
run locally or unchanged on a ``dask.distributed`` cluster; each task runs the
op on its block on the OpenCL device of the process that runs it (or the one
:class:`WorkerDevices` gave its worker).

How a block is made exact (pure geometry, :func:`transpose_window` and
:func:`conv_window`): for each output block, the input rows and columns it
reads are cut from the input's chunks (however many chunks that spans, so
chunks smaller than the halo ``(k - 1) * rate`` need no rechunking), zero-padded
where they run past the image border (forward op only), and the op runs with
VALID padding on that window; the block is then cropped out of the result.
TF's SAME split thus applies at the image border only, never at a seam.

Needs the ``dask`` extra (``dask[array]`` and ``distributed``).
"""

from __future__ import annotations

import operator
import warnings
from typing import NamedTuple

import dask.array as da
import numpy as np
from dask.array.core import PerformanceWarning
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from distributed import WorkerPlugin, get_worker

import atrous_cl
from atrous_cl import geometry
from atrous_cl.errors import picklable_chain
from atrous_cl.validation import check_conv_args, check_dtypes, check_transpose_args

__all__ = ["Window", "WorkerDevices", "atrous_conv2d", "atrous_conv2d_transpose", "conv_window",
           "output_chunks", "transpose_window"]


class Window(NamedTuple):
    """What one output block reads along one axis, and how it is cut from the op's result.

    The block is ``op_VALID(pad(x[start:stop], (pad_before, pad_after)))[crop_start:crop_stop]``.
    """

    start: int
    stop: int
    pad_before: int
    pad_after: int
    crop_start: int
    crop_stop: int


def transpose_window(q0: int, q1: int, size: int, k: int, rate: int, before: int) -> Window:
    """Input window of the transpose op's output rows ``[q0, q1)`` along one axis.

    Output row ``q`` is row ``q + before`` of the full result, which input
    row ``i`` reaches through tap ``a`` when ``i = q + before - a * rate``.
    The rows ``[q0, q1)`` thus read input rows ``[q0 + before - (E - 1), q1 +
    before)`` (``E`` the effective kernel size), clipped to the image; the
    VALID op on them gives full rows from ``start`` on, from which the block is
    cropped. Rows clipped off at the border contribute nothing in the single
    call either, so no padding is needed.

    Args:
        q0, q1: the output block's rows, ``0 <= q0 < q1 <=`` the output size.
        size: the input's size along the axis.
        k, rate: taps and dilation along the axis.
        before: the crop pad at the start of the axis (``geometry.pads``' top or left).
    """
    halo = geometry.effective_kernel_size(k, rate) - 1
    start, stop = max(0, q0 + before - halo), min(size, q1 + before)
    return Window(start, stop, 0, 0, q0 + before - start, q1 + before - start)


def conv_window(q0: int, q1: int, size: int, k: int, rate: int, before: int) -> Window:
    """Input window of the forward op's output rows ``[q0, q1)`` along one axis.

    Output row ``q`` reads padded rows ``q + a * rate``, i.e. input rows
    ``q - before + a * rate``: the block reads ``[q0 - before, q1 - before +
    E - 1)``. What of that lies outside the image is TF's zero padding and is
    padded back, so that the VALID op gives exactly ``q1 - q0`` rows.

    Args:
        q0, q1: the output block's rows, ``0 <= q0 < q1 <=`` the output size.
        size: the input's size along the axis.
        k, rate: taps and dilation along the axis.
        before: TF's pad at the start of the axis (``geometry.pads``' top or left).
    """
    halo = geometry.effective_kernel_size(k, rate) - 1
    lo, hi = q0 - before, q1 - before + halo
    start, stop = max(0, lo), min(size, hi)
    return Window(start, stop, start - lo, hi - stop, 0, q1 - q0)


def output_chunks(chunks: tuple[int, ...], k: int, rate: int, padding: str,
                  transpose: bool) -> tuple[int, ...]:
    """The output's chunks along one spatial axis, from the input's.

    SAME keeps the input's chunks. VALID adds the halo ``(k - 1) * rate`` to
    the last chunk (transpose op) or takes it off the end (forward op), where
    chunks that would lie wholly past the end are dropped.
    """
    halo = geometry.effective_kernel_size(k, rate) - 1
    if padding == geometry.SAME:
        return tuple(chunks)
    if transpose:
        return tuple(chunks[:-1]) + (chunks[-1] + halo,)
    size = sum(chunks) - halo
    bounds = np.cumsum((0,) + tuple(chunks))
    kept = [int(b) for b in bounds if b < size] + [size]
    return tuple(np.diff(kept).tolist())


def _bounds(chunks: tuple[int, ...]) -> np.ndarray:
    return np.cumsum((0,) + tuple(chunks))


def _pieces(start: int, stop: int, bounds: np.ndarray) -> list[tuple[int, int, int]]:
    """``(chunk index, local start, local stop)`` of every input chunk ``[start, stop)`` touches."""
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    out = []
    for c in range(first, len(bounds) - 1):
        if bounds[c] >= stop:
            break
        lo = int(bounds[c])
        out.append((c, max(start, lo) - lo, min(stop, int(bounds[c + 1])) - lo))
    return out


def _part(layer: dict, cut: str, chunk: tuple, chunks, r0: int, r1: int, c0: int, c1: int):
    """The key of rows ``[r0, r1)`` and columns ``[c0, c1)`` of input ``chunk``, adding a cut task
    to ``layer`` unless that is the whole chunk."""
    _, b, ri, ci, _ = chunk
    if (r0, r1, c0, c1) == (0, chunks[1][ri], 0, chunks[2][ci]):
        return chunk
    key = (cut, b, ri, ci, r0, r1, c0, c1)
    layer.setdefault(key, (_cut, chunk, r0, r1, c0, c1))
    return key


def _cut(block, r0: int, r1: int, c0: int, c1: int):
    """A part of one input chunk, copied so that the chunk itself can be freed."""
    return block[:, r0:r1, c0:c1].copy()


class WorkerDevices(WorkerPlugin):
    """A ``dask.distributed`` worker plugin giving each worker its own OpenCL device.

    For a machine with several GPUs under one ``LocalCluster`` (whose workers
    share one environment, so ``PYOPENCL_CTX`` cannot differ between them)::

        client.register_plugin(atrous_cl.dask.WorkerDevices(["0:0", "0:1"]))

    Tasks run with ``device=None`` then use their worker's device; a
    ``device`` passed to the functions still wins. Workers it names no device
    for keep their default.

    Args:
        selectors: a list, worker ``i`` (``LocalCluster`` names its workers
            0, 1, ...) getting ``selectors[i % len(selectors)]``; or a dict from
            worker name (``dask worker --name``) to selector.

    Raises:
        TypeError: ``selectors`` is not a non-empty list or dict of ``'P:D'`` strings.
    """

    name = "atrous-cl-devices"

    def __init__(self, selectors):
        if not isinstance(selectors, (list, tuple, dict)) or not selectors or not all(
                isinstance(v, str) for v in (selectors.values() if isinstance(selectors, dict)
                                             else selectors)):
            raise TypeError(f"selectors must be a non-empty list of 'P:D' strings or a dict from "
                            f"worker name to one, got {selectors!r}")
        self.selectors = selectors

    def device_for(self, worker_name):
        """The selector for the worker named ``worker_name``, or None."""
        if isinstance(self.selectors, dict):
            return self.selectors.get(worker_name)
        if isinstance(worker_name, int):
            return self.selectors[worker_name % len(self.selectors)]
        return None

    def setup(self, worker):
        worker.atrous_cl_device = self.device_for(worker.name)

    def teardown(self, worker):
        worker.atrous_cl_device = None


def _worker_device():
    """The device :class:`WorkerDevices` gave this worker, or None (also outside workers)."""
    try:
        return getattr(get_worker(), "atrous_cl_device", None)
    except ValueError:  # not in a distributed worker: the local schedulers
        return None


def _assemble(parts, rows: Window, cols: Window):
    """The window: ``parts`` (rows of chunk pieces) side by side, zero-padded, in one copy.

    A window inside one chunk and without padding (no halo, or a whole image per
    chunk) is that chunk itself, not copied.
    """
    pads = (rows.pad_before, rows.pad_after, cols.pad_before, cols.pad_after)
    if len(parts) == 1 and len(parts[0]) == 1 and not any(pads):
        return parts[0][0]
    first = parts[0][0]
    height = sum(row[0].shape[1] for row in parts) + rows.pad_before + rows.pad_after
    width = sum(p.shape[2] for p in parts[0]) + cols.pad_before + cols.pad_after
    shape = (first.shape[0], height, width, first.shape[3])
    window = np.zeros(shape, first.dtype) if any(pads) else np.empty(shape, first.dtype)
    r = rows.pad_before
    for row in parts:
        c = cols.pad_before
        for p in row:
            window[:, r:r + p.shape[1], c:c + p.shape[2]] = p
            c += p.shape[2]
        r += row[0].shape[1]
    return window


class _Reduced(NamedTuple):
    """One axis of a block whose rate is at least what it reads spans (:func:`_reduce`)."""

    tap: int | None  # the one tap that reads the window's data along this axis, if any
    t0: int  # the window's data the tap reads: [t0, t1)
    t1: int
    c: int  # the data index the tap reads at block row 0 is c + s * tap * rate


def _reduce(win: Window, k: int, rate: int, transpose: bool) -> tuple[_Reduced | None, int]:
    """``(the axis reduced, or None for a rate below its span; the span then)``: what
    block row ``u`` reads of the window's data
    (``window.stop - window.start`` rows, unpadded) through tap ``a``: index
    ``c + u + s * a * rate``, ``(c, s) = (crop_start, -1)`` for the transpose op
    and ``(-pad_before, +1)`` for the forward op. Data indices of two taps that
    both reach the data differ by less than the span, ``data + block - 1``; a
    rate at least that leaves one tap at most reading data, and any rate
    from the span up reads the same."""
    data, block = win.stop - win.start, win.crop_stop - win.crop_start
    c, s = (win.crop_start, -1) if transpose else (-win.pad_before, 1)
    span = data + block - 1
    if rate < span:
        return None, span
    live = [a for a in range(k) if -c - block + 1 <= s * a * rate <= data - 1 - c]
    if not live:
        return _Reduced(None, 0, 0, c), span
    first = c + s * live[0] * rate
    t0, t1 = max(0, first), min(data, first + block)
    return _Reduced(live[0], t0, t1, c - t0), t1 - t0 + block - 1


def _run_reduced(parts, filters, transpose: bool, rate: int, rows: Window, cols: Window,
                 axes, out_channels: int, device):
    """A block whose rate is at least the span along both axes (:func:`_reduce`), without
    the window TF's rate implies (``(k - 1) * rate`` rows, which for rates like
    ``2**40`` no memory holds): each axis keeps the rows its one tap reads, and
    the op runs at a rate of the largest new span, which reads the same data
    through the same taps and every other tap outside it, as TF's rate does:
    the transpose op adds nothing there, the forward op reads zero padding
    (``0 * f``, NaN for a NaN in ``f``, as the single call gives).
    """
    (ry, span_y), (rx, span_x) = axes
    dtype = np.result_type(parts[0][0].dtype, filters.dtype)
    n = parts[0][0].shape[0]
    kh, kw = filters.shape[:2]
    bh, bw = rows.crop_stop - rows.crop_start, cols.crop_stop - cols.crop_start
    if ry.tap is None or rx.tap is None:  # no term reads the data
        if transpose:
            return np.zeros((n, bh, bw, out_channels), dtype)
        # Every tap reads TF's zero padding: sums of 0 * f, at any rate.
        window = np.zeros((n, bh + kh - 1, bw + kw - 1, parts[0][0].shape[3]), dtype)
        return atrous_cl.atrous_conv2d(window, filters, 1, geometry.VALID, device=device)
    data = _assemble(parts, rows._replace(pad_before=0, pad_after=0),
                     cols._replace(pad_before=0, pad_after=0))[:, ry.t0:ry.t1, rx.t0:rx.t1]
    new_rate = max(span_y, span_x)
    s = -1 if transpose else 1
    cy = ry.c + s * ry.tap * (rate - new_rate)
    cx = rx.c + s * rx.tap * (rate - new_rate)
    if transpose:
        h, w = data.shape[1:3]
        shape = (n, h + (kh - 1) * new_rate, w + (kw - 1) * new_rate, out_channels)
        y = atrous_cl.atrous_conv2d_transpose(data, filters, shape, new_rate, geometry.VALID,
                                              device=device)
        block = np.zeros((n, bh, bw, out_channels), y.dtype)
        _place(block, y, cy, cx)
        return block
    window = np.zeros((n, bh + (kh - 1) * new_rate, bw + (kw - 1) * new_rate, data.shape[3]),
                      dtype)
    _place(window, data, cy, cx)
    return atrous_cl.atrous_conv2d(window, filters, new_rate, geometry.VALID, device=device)


def _place(dst, src, y0: int, x0: int) -> None:
    """``dst[:, i, j] = src[:, i + y0, j + x0]`` wherever both exist."""
    h, w = dst.shape[1:3]
    sh, sw = src.shape[1:3]
    i0, i1 = max(0, -y0), min(h, sh - y0)
    j0, j1 = max(0, -x0), min(w, sw - x0)
    if i0 < i1 and j0 < j1:
        dst[:, i0:i1, j0:j1] = src[:, i0 + y0:i1 + y0, j0 + x0:j1 + x0]


def _run_block(parts, filters, transpose: bool, rate: int, rows: Window, cols: Window,
               out_channels: int, device):
    """One task: assemble the window from its parts, run the op with VALID, crop.

    Runs on the worker; the OpenCL queue is made here, in the worker's process
    (``device`` a ``'P:D'`` selector, or None for the worker's default device).
    A rate at least what the block reads spans runs as :func:`_run_reduced`.
    """
    kh, kw = filters.shape[:2]
    device = device or _worker_device()
    axes = (_reduce(rows, kh, rate, transpose), _reduce(cols, kw, rate, transpose))
    try:
        if axes[0][0] is not None and axes[1][0] is not None:
            return _run_reduced(parts, filters, transpose, rate, rows, cols, axes,
                                out_channels, device)
        window = _assemble(parts, rows, cols)
        if transpose:
            n, h, w, _ = window.shape
            shape = (n, h + (kh - 1) * rate, w + (kw - 1) * rate, out_channels)
            y = atrous_cl.atrous_conv2d_transpose(window, filters, shape, rate, geometry.VALID,
                                                  device=device)
        else:
            y = atrous_cl.atrous_conv2d(window, filters, rate, geometry.VALID, device=device)
    except Exception as e:
        # A distributed worker pickles the error with its chain; pyopencl's
        # errors do not pickle, and the client would get a bare Exception.
        picklable_chain(e)
        raise
    block = y[:, rows.crop_start:rows.crop_stop, cols.crop_start:cols.crop_stop]
    # A view saves a copy of every block; but where the window's result is much
    # larger than the block (chunks smaller than the halo), a copy lets it go.
    return block if 4 * y.size <= 5 * block.size else block.copy()


def _transpose_output_shape(value_shape, filters, rate, padding) -> tuple[int, ...]:
    """TF's output shape for the transpose op, or, for arguments it cannot be computed from,
    a placeholder: the reference then refuses the bad argument itself, as it checks shapes,
    rate and padding before the output's spatial size."""
    try:
        hw = geometry.transpose_output_hw(value_shape[1:3], filters.shape[:2], operator.index(rate),
                                          padding)
        return (value_shape[0],) + tuple(hw) + (filters.shape[2],)
    except (TypeError, ValueError, IndexError):
        return tuple(value_shape)


def _check(x, filters, rate, padding, device, transpose: bool):
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array.Array (NHWC), got {type(x).__name__}; "
                        f"wrap a NumPy array with dask.array.from_array(x, chunks=...)")
    if device is not None and not isinstance(device, str):
        raise TypeError(f"device must be None (each worker's default device) or a 'P:D' selector "
                        f"string, got {type(device).__name__}: a pyopencl.Device cannot be sent "
                        f"to worker processes")
    # A copy: the graph is computed later, and a caller updating its filters in
    # place meanwhile (a training step) must not change this result.
    filters = np.array(filters)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (NHWC), got {x.ndim}-D with shape {x.shape}")
    if any(np.isnan(s) for s in x.shape):
        raise ValueError(f"x must have known chunk sizes, got shape {x.shape}; "
                         f"call x.compute_chunk_sizes() first")
    # Chunks from N5 or some Zarr stores are big-endian: swapped lazily, per
    # chunk (the single call refuses such arrays, which it would read in place).
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if not filters.dtype.isnative:
        filters = filters.astype(filters.dtype.newbyteorder("="))
    # Every argument checked as the op (and the reference) checks it (README
    # "Errors"), without a device.
    check_dtypes(x.dtype, filters.dtype)
    if transpose:
        check_transpose_args(x.shape, filters.shape,
                             _transpose_output_shape(x.shape, filters, rate, padding), rate,
                             padding)
    else:
        check_conv_args(x.shape, filters.shape, rate, padding)
    rate = operator.index(rate)
    if len(x.chunks[3]) > 1:
        warnings.warn(f"x's channel axis is split into {len(x.chunks[3])} chunks "
                      f"{x.chunks[3]}; every output block needs all channels, so x is rechunked "
                      f"to one channel chunk (rechunk it yourself, x.rechunk({{3: -1}}), to "
                      f"silence this)", PerformanceWarning, stacklevel=3)
        x = x.rechunk({3: -1})
    return x, filters, rate


def _apply(x, filters, rate, padding, device, transpose: bool) -> da.Array:
    x, filters, rate = _check(x, filters, rate, padding, device, transpose)
    kh, kw = filters.shape[:2]
    out_channels = filters.shape[2] if transpose else filters.shape[3]
    p = geometry.pads((kh, kw), rate, padding)
    window_of = transpose_window if transpose else conv_window
    out_h = output_chunks(x.chunks[1], kh, rate, padding, transpose)
    out_w = output_chunks(x.chunks[2], kw, rate, padding, transpose)
    chunks = (x.chunks[0], out_h, out_w, (out_channels,))
    dtype = np.result_type(x.dtype, filters.dtype)
    if 0 in x.shape[1:3]:  # no input pixels: every output sum is empty (VALID's output is zeros)
        return da.zeros(tuple(map(sum, chunks)), dtype=dtype, chunks=chunks)
    in_h, in_w = _bounds(x.chunks[1]), _bounds(x.chunks[2])
    op = "atrous_conv2d_transpose" if transpose else "atrous_conv2d"
    token = tokenize(x, filters, rate, padding, device, op)
    name, filters_key = f"{op}-{token}", f"{op}-filters-{token}"
    # The filters enter the graph once, as their own key: every task refers to
    # it, and dask.distributed ships it to each worker once, not per task.
    layer: dict = {filters_key: filters}
    row_windows = [window_of(q0, q1, x.shape[1], kh, rate, p.top)
                   for q0, q1 in zip(_bounds(out_h)[:-1], _bounds(out_h)[1:])]
    col_windows = [window_of(q0, q1, x.shape[2], kw, rate, p.left)
                   for q0, q1 in zip(_bounds(out_w)[:-1], _bounds(out_w)[1:])]
    # Parts of input chunks are cut by tasks of their own, which the
    # distributed scheduler runs where the chunk is: only the halo strips a
    # window needs from a neighbouring chunk travel between workers.
    cut = f"{op}-cut-{token}"
    for i, rows in enumerate(row_windows):
        row_pieces = _pieces(rows.start, rows.stop, in_h)
        for j, cols in enumerate(col_windows):
            col_pieces = _pieces(cols.start, cols.stop, in_w)
            for b in range(len(x.chunks[0])):
                if 0 in (x.chunks[0][b], out_h[i], out_w[j]):
                    # A zero-length chunk has no window to run the op on.
                    layer[(name, b, i, j, 0)] = (np.zeros, (x.chunks[0][b], out_h[i], out_w[j],
                                                            out_channels), dtype)
                    continue
                parts = [[_part(layer, cut, (x.name, b, ri, ci, 0), x.chunks, r0, r1, c0, c1)
                          for ci, c0, c1 in col_pieces] for ri, r0, r1 in row_pieces]
                layer[(name, b, i, j, 0)] = (_run_block, parts, filters_key, transpose, rate,
                                              rows, cols, out_channels, device)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x])
    return da.Array(graph, name, chunks, dtype=dtype)


def atrous_conv2d_transpose(x, filters, rate: int, padding: str, *,
                            device: str | None = None) -> da.Array:
    """``tf.nn.atrous_conv2d_transpose`` on a Dask array, lazily, block by block.

    Every element equals :func:`atrous_cl.atrous_conv2d_transpose` on the
    whole of ``x`` (up to the float rounding of sums taken in another order).

    Args:
        x: NHWC ``dask.array.Array``, chunked along batch, height and width in
            any sizes (chunks smaller than the halo ``(k - 1) * rate`` too). A
            channel axis in several chunks is rechunked to one, with a
            ``PerformanceWarning``.
        filters: ``[kh, kw, out_channels, in_channels]``, a NumPy array (or
            array-like) of ``x``'s dtype. It is put in the graph once.
        rate: dilation, a positive integer.
        padding: ``'SAME'`` or ``'VALID'``.
        device: a ``'P:D'`` selector for every task's device, or None for each
            worker's own: the one :class:`WorkerDevices` gave it, else its
            process's default (``PYOPENCL_CTX``, else the best device found).
            To give each worker of a multi-GPU machine its own device, start
            each with its own ``PYOPENCL_CTX`` or register :class:`WorkerDevices`.

    Returns:
        A lazy ``dask.array.Array``: the output shape TF gives (``x``'s spatial
        size for SAME, ``+ (k - 1) * rate`` for VALID), chunked like ``x``
        with VALID's extra rows and columns on the last chunk, the channels in
        one chunk.

    Raises:
        TypeError: ``x`` is not a Dask array, ``device`` not a string, or a
            wrong type or dtype as the op raises it.
        ValueError: any argument the op refuses (checked up front, without a
            device), or ``x`` with unknown chunk sizes.

    Unlike the single call there is no ``output_shape`` argument: TF's output
    shape is the only one the op accepts, so it is computed.
    """
    return _apply(x, filters, rate, padding, device, transpose=True)


def atrous_conv2d(x, filters, rate: int, padding: str, *, device: str | None = None) -> da.Array:
    """``tf.nn.atrous_conv2d`` on a Dask array, lazily, block by block.

    Every element equals :func:`atrous_cl.atrous_conv2d` on the whole of ``x``
    (up to the float rounding of sums taken in another order).

    Args:
        x: NHWC ``dask.array.Array``, chunked as for :func:`atrous_conv2d_transpose`.
        filters: ``[kh, kw, in_channels, out_channels]``, of ``x``'s dtype.
        rate: dilation, a positive integer.
        padding: ``'SAME'`` or ``'VALID'``.
        device: as for :func:`atrous_conv2d_transpose`.

    Returns:
        A lazy ``dask.array.Array`` of TF's output shape (``x``'s spatial size
        for SAME, ``- (k - 1) * rate`` for VALID), chunked like ``x`` (for
        VALID, chunks past the smaller end are dropped and the last one
        shortened), the channels in one chunk.

    Raises:
        TypeError, ValueError: as for :func:`atrous_conv2d_transpose`; VALID
            with a dilated kernel larger than ``x`` is a ``ValueError``.
    """
    return _apply(x, filters, rate, padding, device, transpose=False)
