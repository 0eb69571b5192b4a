# SPDX-License-Identifier: Apache-2.0
"""The host-call path the public ops share, from the caller's arrays to the result.

Each public op validates its arguments, works out its geometry, and hands
:func:`run` its inputs, its results' shapes and the launch :class:`Step`\\ s
that compute them. :func:`run` then

1. picks the queue (:func:`queue_for`: a device input's own, or the
   caller's queue, context or device, or the default);
2. refuses a dtype or sizes the device cannot take (:func:`check_device`),
   before anything is allocated, and looks up the tiles and kernels: once per
   queue and problem (:func:`prepared`);
3. checks a caller's ``out=`` (:func:`check_out`, :func:`check_apart`) or
   allocates the results;
4. turns the inputs into device arrays: uploaded without a wait (filters only
   if a launch repacks them: :func:`device_array`), or on a CPU device NumPy
   arrays used in place (:class:`~atrous_cl.memory.HostArray`);
5. enqueues the steps (waiting for them if anything fails, since they may
   use host arrays in place or copy from them), and returns NumPy arrays for
   host inputs, device arrays on the same queue otherwise.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from atrous_cl import discovery, filter_grad, launch, local_tile, memory, tiles, tuning
from atrous_cl.cache import warn_once
from atrous_cl.errors import DeviceError
from atrous_cl.facts import check_dtype_support, check_fits, describe, status_name
from atrous_cl.memory import HostArray
from atrous_cl.validation import ConvArgs, TransposeArgs


#: A step's launch on a queue, given the call's arrays by name.
Launch = Callable[[cl.CommandQueue, dict], None]


class Transpose(NamedTuple):
    """A launch of the transpose kernel (:func:`atrous_cl.launch.transpose`) on the
    arrays named ``value``, ``filters`` and ``out``, with the tuned tile; or of the
    local-memory kernel (:func:`atrous_cl.local_tile.launch`) where its tile was tuned."""

    args: TransposeArgs
    value: str = "value"
    filters: str = "filters"
    out: str = "out"
    forward_filters: bool = False

    def temporaries(self, device: cl.Device, dtype: np.dtype) -> dict[str, int]:
        return launch.temporaries(device, dtype, self.args)

    def prepare(self, queue: cl.CommandQueue, dtype: np.dtype) -> Launch:
        device = queue.device
        tile = tuning.tile_for(device, dtype, self.args)
        if isinstance(tile, local_tile.LocalTile):
            try:
                local_tile.plan(queue.context, device, dtype, self.args, tile,
                                self.forward_filters)
            except ValueError as e:  # a tile this problem's build cannot run (stage, group)
                warn_once(f"atrous-cl ignores the local tile {tile} tuned for "
                          f"{tuning.shape_class(dtype, *self.args[:2], self.args.rate)} on "
                          f"{describe(device)} for this problem: {e}; the default tile "
                          f"stands in", stacklevel=2)
                tile = tiles.default_for(device, dtype, self.args)
            else:
                run = functools.partial(_local_launch, args=self.args, tile=tile,
                                        forward_filters=self.forward_filters)
                return TransposeLaunch(run, self.value, self.filters, self.out, None)
        p = launch.launch_plan(queue.context, device, dtype, self.args, tile, self.forward_filters)
        return TransposeLaunch(launch.launcher(p), self.value, self.filters, self.out, p)


def _local_launch(queue, value, filters, out, *, args, tile, forward_filters) -> None:
    local_tile.launch(queue, value, filters, out, args, tile, forward_filters)


class TransposeLaunch(NamedTuple):
    """:class:`Transpose`'s launch (``launch(queue, arrays)``), with its plan."""

    run: Callable
    value: str
    filters: str
    out: str
    plan: launch.Plan | None  # None: nothing to launch, or the local-memory kernel's

    def __call__(self, queue: cl.CommandQueue, arrays: dict) -> None:
        self.run(queue, arrays[self.value], arrays[self.filters], arrays[self.out])


class FilterGrad(NamedTuple):
    """A launch of the filter gradient (:func:`atrous_cl.filter_grad.launch`) of the
    forward conv ``args`` from the array named ``x`` to the one named ``d``."""

    args: ConvArgs
    x: str
    d: str
    out: str

    def temporaries(self, device: cl.Device, dtype: np.dtype) -> dict[str, int]:
        winograd = filter_grad.winograd_layout(device, dtype, self.args)
        if winograd is not None:
            return winograd.temporaries(self.args, dtype)
        plan = filter_grad.layout(device, dtype, self.args)
        counts = {"the filter gradient's partial sums": plan.partials}
        wide = 2 if launch.widens_inputs(device, dtype) else 1  # float32 copies of float16
        if plan.xpack:
            counts[f"the filter gradient's packed {self.x}"] = \
                wide * filter_grad.packed_x_elements(self.args, plan.gc)
        elif wide > 1:
            counts[f"the filter gradient's widened {self.x}"] = 2 * math.prod(self.args.value_shape)
        if plan.dpack:
            counts[f"the filter gradient's packed {self.d}"] = \
                wide * filter_grad.packed_d_elements(self.args, plan.tile, plan.ov)
        elif wide > 1:
            counts[f"the filter gradient's widened {self.d}"] = 2 * math.prod(self.args.output_shape)
        return counts

    def prepare(self, queue: cl.CommandQueue, dtype: np.dtype) -> Launch:
        x, d, out, args = self.x, self.d, self.out, self.args
        # Built now, with the call's other programs: before any launch writes a result.
        plan = filter_grad.prepare(queue.context, queue.device, dtype, args)
        return lambda queue, arrays: filter_grad.launch(queue, arrays[x], arrays[d], arrays[out],
                                                        args, plan)


#: What :func:`run` launches: :class:`Transpose` or :class:`FilterGrad`, whose
#: ``prepare(queue, dtype)`` gives ``launch(queue, arrays)``.
Step = Transpose | FilterGrad


def host_or_device(x):
    """A device array as it is; anything else as a NumPy array."""
    return x if isinstance(x, cl_array.Array) else np.asarray(x)


def run(inputs: dict[str, Any], results: dict[str, tuple[int, ...]], dtype: np.dtype,
        steps: tuple, *, queue: cl.CommandQueue | None, context: cl.Context | None,
        device: cl.Device | str | None, out=None, host_key: tuple | None = None):
    """Run ``steps`` on ``inputs`` (:func:`host_or_device` arrays) into new or given results.

    Args:
        inputs: the op's arrays by name, in the order they are uploaded (but
            filters that only repacks read: when a launch repacks them).
        results: the results' shapes by name. A single result is called
            ``out`` in messages and checks against the caller's ``out``; several
            check against a tuple of as many device arrays.
        dtype: the inputs' common dtype (checked by the caller).
        steps: :class:`Transpose` and :class:`FilterGrad` launches, in order,
            naming arrays of ``inputs`` and ``results``.
        queue, context, device, out: the public op's arguments.
        host_key: the transpose op's :func:`host_key` for its arguments, if
            any: a host call that can repeat without its wrappers is then
            remembered for :func:`transpose_host`.

    Returns:
        The result, or a tuple of them: NumPy arrays for host inputs, device
        arrays on the same queue when any input is one.
    """
    on_device, queue = queue_for(tuple(inputs.values()), queue, context, device)
    call = prepared(queue, dtype, steps, inputs, results, on_device)
    outs = None if out is None else _checked_outs(out, results, dtype, queue, on_device, inputs)
    # Device inputs are checked before anything is enqueued: a refusal after an upload
    # waits for the queue (below), which may hold other threads' work or wait on a user
    # event that is set only after this call returns.
    for name, x in inputs.items():
        if isinstance(x, cl_array.Array):
            check_device_input(queue, name, x)
    arrays: dict = {}
    try:
        for name, x in inputs.items():
            arrays[name] = device_array(queue, name, x, dtype, call.in_place, call.svm,
                                        apart_from=tuple(arrays.values()),
                                        lazy=name in call.lazy, at_once=on_device)
        if outs is None:
            outs = [result(shape, dtype, queue, on_device, call.in_place, call.svm, empty)
                    for shape, empty in zip(results.values(), call.empties)]
        arrays.update(zip(results, outs))
        for launch_step in call.launches:
            launch_step(queue, arrays)
        got = outs if on_device else [o.get(queue) for o in outs]
        for x in arrays.values():
            if isinstance(x, memory.Upload):
                x.wait()  # done with the results, but for a copy no result needed
    except BaseException:
        # Kernels may still use host arrays in place that the unwinding frees, and
        # copies to the device may still read the caller's arrays.
        memory.drain(queue)
        raise
    if host_key is not None and call.in_place and out is None:
        _remember_host_call(queue, host_key, call, inputs, dtype)
    return got[0] if len(got) == 1 else tuple(got)


class HostCall(NamedTuple):
    """A host call of the transpose op that its queue has run, as :func:`transpose_host`
    repeats it: valid for the tuning table and :func:`forget_prepared` count it
    was made with (as :class:`Prepared`)."""

    table: dict
    epoch: int
    plan: launch.Plan
    svm: bool  # value and result as system SVM pointers (memory.uses_system_svm)
    empty: Callable | None  # the result's allocator without system SVM (memory.result_allocator)
    shape: tuple[int, ...]  # the result's
    dtype: np.dtype
    # A result allocated while the last call's kernel ran, for the next call to take
    # (list.pop: one taker, even between threads; threads may leave one each); results
    # from the SVM pool only (``empty``, see transpose_host).
    spares: list


def host_key(value, filters, output_shape, rate, padding) -> tuple | None:
    """What decides a host call of the transpose op besides its queue, or None when
    it may not repeat without its checks: inputs that are not NumPy arrays
    themselves, or arguments of other types than a tuple or list of 4 ints, an
    int and a str (``2.0 == 2`` and hashes alike, so a float could match an
    int's entry)."""
    if not (type(value) is np.ndarray and type(filters) is np.ndarray and type(rate) is int
            and type(padding) is str and type(output_shape) in (tuple, list)
            and len(output_shape) == 4):
        return None
    n, h, w, c = output_shape
    if not (type(n) is int and type(h) is int and type(w) is int and type(c) is int):
        return None
    return (value.shape, filters.shape, value.dtype, filters.dtype, (n, h, w, c), rate, padding)


def _remember_host_call(queue: cl.CommandQueue, key: tuple, call: Prepared, inputs: dict,
                        dtype: np.dtype) -> None:
    """Keep the transpose op's host call just run on ``queue`` for :func:`transpose_host`,
    where it repeats as one launch of the main kernel: packed filters kept
    (:data:`atrous_cl.launch.REUSE_BYTES`), no widened inputs."""
    step = call.launches[0] if len(call.launches) == 1 else None
    p = step.plan if isinstance(step, TransposeLaunch) else None
    if p is None or p.wide or inputs[step.filters].nbytes > launch.REUSE_BYTES:
        return
    memo = getattr(queue, "_atrous_cl_host", None)
    if memo is None or len(memo) >= _PREPARED_PER_QUEUE:
        memo = queue._atrous_cl_host = {}
    memo[key] = HostCall(call.table, call.epoch, p, call.svm, call.empties[0], key[4], dtype,
                         [])


def transpose_host(key: tuple, value: np.ndarray, filters: np.ndarray,
                   queue: cl.CommandQueue | None) -> np.ndarray | None:
    """The transpose op's host call, when ``queue`` (or the default queue) ran the same
    problem before (``key``, :func:`host_key` of the call's arguments) with the same
    filters' bytes, as one launch of the main kernel on the arrays in place; None
    otherwise (and nothing done), for the whole call to run.

    What the whole call checked for this key holds again (shapes, dtypes, the
    device's limits); what may differ from call to call is checked here: the
    tuning table, the arrays' layout (C-contiguous, aligned, a writeable
    ``value``: else the whole call copies them) and the filters' bytes.
    ``python benchmarks/compare_installs.py`` against the commit before
    (2026-12-03 23:00 UTC, 11 rounds of 5 calls, time after / before): Intel's
    runtime A 0.95 B 0.99 C 0.97 D 0.99 E 0.79 F 0.77, Debian's PoCL 3.1 A 0.98
    B 1.00 C 0.89 D 0.95 E 0.88 F 0.83, results identical.
    """
    queue = discovery.queue_if_made(queue)
    memo = getattr(queue, "_atrous_cl_host", None)
    known = None if memo is None else memo.get(key)
    if known is None or known.table is not tuning.table() or known.epoch != _epoch:
        return None
    # The whole call would raise this now too: its checks of the arguments
    # passed for this key before.
    discovery.check_not_forked()
    flags = value.flags
    if not (flags.c_contiguous and flags.aligned and flags.writeable
            and filters.flags.c_contiguous):
        return None
    filters_bytes = filters.tobytes()
    value = HostArray(value, queue, svm=known.svm)
    spares = known.spares
    try:
        out = HostArray(spares.pop(), queue, written=True, svm=True)  # SVM from the pool
    except IndexError:
        out = result(known.shape, known.dtype, queue, False, True, known.svm, known.empty)
    try:
        done = launch.launch_packed(known.plan, queue, value.base_data, filters_bytes,
                                    out.base_data)
        if done is None:
            return None
        out.add_event(done)
        # While the kernel runs: the next call's result, where it comes from the SVM pool
        # (memory.result_allocator: PoCL), which costs a call 7.5 us before its launch back
        # to back, 49 right after another op's work. Not NumPy's, which costs less than
        # what the allocation here takes from Intel's runtime's threads.
        if not spares and known.empty is not None:
            try:
                spares.append(host_result(known.shape, known.dtype, known.empty))
            except (cl.Error, MemoryError):
                pass  # the next call allocates its own; this one's result stands
        return out.get(queue)
    except BaseException:
        # The kernel may still use the arrays in place that the unwinding frees.
        memory.drain(queue)
        raise


def queue_for(arrays, queue, context, device) -> tuple[bool, cl.CommandQueue]:
    """``(on_device, queue)``: whether any input is a device array, and the queue to run on.

    Without a queue, context or device named, a device input's own queue.
    """
    on_device = [x for x in arrays if isinstance(x, cl_array.Array)]
    if on_device and queue is None and context is None and device is None:
        queue = on_device[0].queue
    return bool(on_device), discovery.get_queue(queue, context, device)


class Prepared(NamedTuple):
    """What a call's queue, dtype, steps and shapes decide, worked out by :func:`prepared`."""

    table: dict  # the tuning table (:func:`atrous_cl.tuning.table`) the tiles came from
    epoch: int  # :func:`forget_prepared`'s count when it was made
    in_place: bool  # host inputs and results used in place (memory.works_in_host_memory)
    svm: bool  # ... as system SVM pointers (memory.uses_system_svm)
    empties: tuple  # per result: its memory.result_allocator (in place, without system SVM)
    launches: tuple  # per step: launch(queue, arrays)
    lazy: frozenset  # inputs only the transpose launches' repacks read (see device_array)


#: Problems a queue remembers (:func:`prepared`); more start the memo afresh.
_PREPARED_PER_QUEUE = 64

_epoch = 0


def forget_prepared() -> None:
    """Make every queue work out its calls afresh (:func:`prepared`). What they
    depend on never changes in a process but in tests, which swap device
    properties and launches for stand-ins."""
    global _epoch
    _epoch += 1


def prepared(queue: cl.CommandQueue, dtype: np.dtype, steps: tuple, inputs: dict,
             results: dict, on_device: bool) -> Prepared:
    """The call's :class:`Prepared`: its checks (:func:`check_device` for the inputs,
    results and the steps' temporaries) passed, its tiles and kernels looked up.

    Remembered on the queue by what decides it (the queue's device never
    changes; the steps hold the problem), and valid for the tuning table its
    tiles came from, so a model calling the op with the same shapes over and
    over runs only the wrappers and launches: E's host call took 0.82x the time
    back to back on Intel's runtime. Each Python step left out saves more where
    a call starts cold (after a pause or another library's work), where it
    costs several times its warm time (``benchmarks/call_cost.py``).
    """
    table = tuning.table()
    memo = getattr(queue, "_atrous_cl_prepared", None)
    if memo is None:
        memo = queue._atrous_cl_prepared = {}
    key = (dtype, steps, tuple([x.shape for x in inputs.values()]), on_device)
    found = memo.get(key)
    if found is not None and found.table is table and found.epoch == _epoch:
        return found
    device = queue.device
    try:
        queue.context  # noqa: B018 (the driver's check, once per queue and problem)
    except cl.LogicError as e:
        raise DeviceError(f"the queue's context is no longer valid on {describe(device)} ({e}): "
                          f"Intel's CPU runtime frees a context once its last pyopencl.Context "
                          f"is collected, even while a queue uses it; keep a reference to the "
                          f"Context beside the queue", status=status_name(e)) from e
    temporaries = {}
    for step in steps:
        temporaries.update(step.temporaries(device, dtype))
    single = len(results) == 1
    shapes = {**{name: x.shape for name, x in inputs.items()},
              **({"the output": next(iter(results.values()))} if single else results)}
    check_device(device, dtype, shapes, temporaries,
                 together="value, filters and output" if single else None)
    in_place = not on_device and memory.works_in_host_memory(device)
    svm = in_place and memory.uses_system_svm(device)
    empties = tuple(memory.result_allocator(queue, math.prod(shape) * dtype.itemsize)
                    if in_place and not svm else None for shape in results.values())
    repacked = {s.filters for s in steps if isinstance(s, Transpose)}
    read = {name for s in steps for name in (
        (s.value, s.out) if isinstance(s, Transpose) else (s.x, s.d, s.out))}
    found = Prepared(table, _epoch, in_place, svm, empties,
                     tuple(step.prepare(queue, dtype) for step in steps),
                     frozenset(repacked - read))
    if len(memo) >= _PREPARED_PER_QUEUE:
        memo.clear()
    memo[key] = found
    return found


def check_device(device: cl.Device, dtype: np.dtype, shapes: dict[str, tuple[int, ...]],
                 temporaries: dict[str, int], together: str | None = None) -> None:
    """Refuse, by name and size, a dtype or tensors the device cannot run or hold,
    before anything is allocated.

    ``temporaries``: the launches' own buffers, in ``dtype``'s elements;
    ``together``: how a message names all of them (default: the names joined).

    Raises:
        DeviceCapabilityError: naming the dtype's extension or the tensors.
    """
    check_dtype_support(device, dtype)
    check_fits(device, dtype, {**{what: math.prod(shape) for what, shape in shapes.items()},
                               **temporaries}, together=together)


def _checked_outs(out, results, dtype, queue, on_device, inputs) -> list:
    """The caller's ``out`` as a list of results, each checked, and apart from every input."""
    single = len(results) == 1
    if not on_device:
        raise TypeError("out is for device arrays; the host path returns "
                        + ("a new NumPy array" if single else "new NumPy arrays"))
    if single:
        outs = {"out": out}
    else:
        if not isinstance(out, (tuple, list)) or len(out) != len(results):
            raise TypeError(f"out must be a pair ({', '.join(results)}) of pyopencl.array.Array, "
                            f"got {type(out).__name__}")
        outs = dict(zip(results, out))
    for o, shape in zip(outs.values(), results.values()):
        check_out(o, shape, dtype, queue)
    check_apart(outs, inputs)
    return list(outs.values())


def check_out(out, output_shape, dtype, queue) -> None:
    """Refuse an ``out`` that is not a C-contiguous device array of the result's
    shape and dtype in the queue's context."""
    if not isinstance(out, cl_array.Array):
        raise TypeError(f"out must be a pyopencl.array.Array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(output_shape) or out.dtype != dtype:
        raise ValueError(f"out must have shape {tuple(output_shape)} and dtype {dtype.name}, "
                         f"got shape {tuple(out.shape)} and dtype {out.dtype.name}")
    if not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous, got strides {out.strides}")
    if out.context != queue.context:
        raise ValueError("out lives in another OpenCL context than the queue the op runs on")
    check_element_offset("out", out)


def check_device_input(queue: cl.CommandQueue, what: str, x: cl_array.Array) -> None:
    """Refuse a device input the kernels cannot take as it is: in another context than
    ``queue``'s, not C-contiguous, or starting inside an element."""
    if x.context != queue.context:
        raise ValueError(f"{what} lives in another OpenCL context than the queue it runs on "
                         f"({describe(x.context.devices[0])} vs {describe(queue.device)})")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous on the device, got strides {x.strides} "
                         f"for shape {x.shape}")
    check_element_offset(what, x)


def check_element_offset(what: str, x: cl_array.Array) -> None:
    """Refuse a device array that starts part-way into an element (``a[1:].view(np.float64)``
    of a float32 array, 4 bytes in): the kernels take offsets in elements, and one rounded
    down read and wrote the elements beside the array's."""
    if x.offset % x.dtype.itemsize:
        raise ValueError(f"{what} starts {x.offset} bytes into its memory, not on a "
                         f"{x.dtype.name} element ({x.dtype.itemsize} bytes each); the kernels "
                         f"address whole elements: pass an array that starts on one (a copy)")


def _memory_span(x: cl_array.Array) -> tuple[int, int, int]:
    """``(memory, first byte, end byte)`` of a device array's elements.

    ``memory`` names the allocation: a sub-buffer is resolved to its parent
    (with its offset added), an SVM allocation is named by its address, and so is a
    buffer over host memory (``CL_MEM_USE_HOST_PTR``): two such buffers over one NumPy
    array are two ``cl_mem`` but one memory.
    """
    data, start = x.base_data, x.offset
    if isinstance(data, cl.MemoryObjectHolder):
        parent = data.get_info(cl.mem_info.ASSOCIATED_MEMOBJECT)
        if parent is not None:
            start += data.get_info(cl.mem_info.OFFSET)
            data = parent
        if data.get_info(cl.mem_info.FLAGS) & cl.mem_flags.USE_HOST_PTR:
            address = data.get_host_array((1,), np.uint8).ctypes.data
            return 0, address + start, address + start + x.nbytes  # SVM's address space
        return data.int_ptr, start, start + x.nbytes
    address = getattr(data, "svm_ptr", None) or getattr(data, "int_ptr", id(data))
    return 0, address + start, address + start + x.nbytes  # one address space for all SVM


def check_apart(outputs: dict, inputs: dict) -> None:
    """Refuse results that share device memory with an input or with each other.

    The kernels read their inputs while they write their results, so a
    result over an input (``out=value``) would be garbage, not an in-place
    update. Only device arrays are compared: host inputs reach the device
    as copies.

    Raises:
        ValueError: naming the two arrays that overlap.
    """
    spans = {name: _memory_span(x) for name, x in {**outputs, **inputs}.items()
             if isinstance(x, cl_array.Array) and x.nbytes}
    names = list(spans)  # the outputs first: each pair with an output in it once
    for i, out_name in enumerate(names):
        if out_name not in outputs:
            break
        for other in names[i + 1:]:
            (mem_a, lo_a, hi_a), (mem_b, lo_b, hi_b) = spans[out_name], spans[other]
            if mem_a == mem_b and lo_a < hi_b and lo_b < hi_a:
                why = ("the kernels write both, each over the other's elements"
                       if other in outputs else
                       f"the kernels read {other} while they write {out_name}, so the op "
                       f"cannot work in place")
                raise ValueError(f"{out_name} shares device memory with {other}: {why}; pass "
                                 f"a separate array")


def device_array(queue: cl.CommandQueue, what: str, x, dtype: np.dtype,
                 in_place: bool = False, svm: bool = False,
                 apart_from=(), lazy: bool = False, at_once: bool = False
                 ) -> cl_array.Array | HostArray | memory.Upload:
    """``x`` as a C-contiguous device array in ``queue``'s context. A device array is
    returned as it is: :func:`run` checks every one (:func:`check_device_input`) before
    anything is enqueued.

    With ``in_place`` (a CPU device, :func:`~atrous_cl.memory.works_in_host_memory`),
    a host ``x`` is used where it lies, copied on the host only if it is not
    C-contiguous and aligned, or for system SVM (``svm``,
    :func:`~atrous_cl.memory.uses_system_svm`) not writeable (pyopencl's SVM
    wrapper takes only writeable memory; the kernels never write an input).
    In a host-pointer buffer, it is also copied if it may overlap one of the
    :class:`~atrous_cl.memory.HostArray` ``apart_from``: OpenCL leaves
    commands on buffers over overlapping host memory undefined.

    Otherwise a host ``x`` is copied to the device (:class:`~atrous_cl.memory.Upload`):
    without a wait (the launches wait for the copy's event), so a host call waits
    once, for its result, not for each input too; or, with ``at_once`` (a
    device-API call, which returns before its kernels run), as its buffer is made.
    With ``lazy`` (filters that only repacks read) only if a launch repacks it, so
    filters whose bytes the launch packed last time are not copied again.
    """
    if in_place:
        if not (type(x) is np.ndarray and x.dtype == dtype and x.flags.c_contiguous
                and x.flags.aligned and (x.flags.writeable or not svm)):
            x = np.require(x, dtype, ["C_CONTIGUOUS", "ALIGNED"] + (["WRITEABLE"] if svm else []))
        if not svm and any(np.may_share_memory(x, other.array) for other in apart_from):
            x = x.copy()
        return memory.HostArray(x, queue, svm=svm)
    if isinstance(x, cl_array.Array):
        return x
    return memory.Upload(np.ascontiguousarray(x, dtype=dtype), queue, memory.memory_pool(queue),
                         now=not lazy, at_once=at_once, what=what)


def host_result(shape, dtype, empty=np.empty) -> np.ndarray:
    """Allocates a host-path result that kernels write in place, with ``empty``
    (:func:`numpy.empty` or :func:`~atrous_cl.memory.result_allocator`'s). Tests
    swap in one that fills it with NaN, so elements the kernels miss show up."""
    return empty(shape, dtype)


def result(shape, dtype, queue: cl.CommandQueue, on_device: bool, in_place: bool = False,
           svm: bool = False, empty=None) -> cl_array.Array | HostArray | memory.Download:
    """A new result array. Only a host-path result, fetched and dropped by the
    op, comes from the pool (a :class:`~atrous_cl.memory.Download`): a device
    result is the caller's, to use on any queue.
    With ``in_place``, a new NumPy array the kernels write directly (with
    ``svm``, system SVM, as it is): in the context's fine-grained buffer SVM
    where ``empty``, :func:`~atrous_cl.memory.result_allocator`'s, is given
    (small results on PoCL: no map before the host reads it)."""
    if in_place:
        return memory.HostArray(host_result(shape, dtype, empty or np.empty), queue, written=True,
                                svm=svm or empty is not None)
    if on_device:
        return cl_array.empty(queue, shape, dtype)
    return memory.Download(shape, dtype, queue, memory.memory_pool(queue))
