# SPDX-License-Identifier: Apache-2.0
"""Memory the launches use: buffer pools, scratch buffers, NumPy arrays in place or copied.

On CPU devices the host API hands NumPy arrays to the kernels where they lie
(:class:`HostArray`: system SVM or host-pointer buffers); elsewhere, and for the
device API's host inputs, they are copied to device buffers (:class:`Upload`)
and host results copied back (:class:`Download`). :func:`drain` keeps a failing
host call from freeing them under a running kernel, and :func:`fill` sets an
array to one value for every dtype.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pyopencl as cl

from atrous_cl.errors import DeviceError
from atrous_cl.facts import describe, facts, is_simulator, status_name

_pools_lock = threading.Lock()


def memory_pool(queue: cl.CommandQueue):
    """A buffer pool for the op's own temporaries on ``queue``, or None.

    Reusing buffers spares the driver fresh pages on every call: uploading 1 MB
    into a new buffer took 0.54 ms on Intel's CPU runtime, into a pooled one
    0.06 ms. A buffer returns to the pool when its array is dropped, possibly
    while kernels using it are still queued; one pool per in-order queue makes
    that safe, since the next user of the buffer is enqueued behind them.
    Out-of-order queues get no pool.
    """
    if queue.properties & cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE:
        return None
    with _pools_lock:  # kept on the queue itself: it lives exactly as long
        pool = getattr(queue, "_atrous_cl_pool", None)
        if pool is None:
            import pyopencl.tools

            pool = queue._atrous_cl_pool = pyopencl.tools.MemoryPool(
                pyopencl.tools.ImmediateAllocator(queue))
        return pool


def scratch(queue: cl.CommandQueue, nbytes: int):
    """A temporary device buffer of ``nbytes`` for kernels on ``queue``, from its pool.

    A bare buffer, not an array: wrapping it in a ``pyopencl.array.Array``
    costs 12 us a call on this project's CPU, the pool itself 0.2.
    """
    pool = memory_pool(queue)
    return pool(nbytes) if pool is not None else cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, nbytes)


def works_in_host_memory(device: cl.Device) -> bool:
    """Whether kernels on ``device`` should read and write NumPy arrays in place: on CPU devices.

    Host memory is a CPU device's memory, so the host API needs no copies in
    or out. With fine-grained system SVM (Intel's CPU runtime) a kernel takes
    the array's pointer itself; elsewhere (PoCL) it gets a buffer created with
    ``CL_MEM_USE_HOST_PTR`` on the array (:class:`HostArray`). Measured
    against uploading and downloading (2-core EPYC, medians interleaved):
    Intel's runtime, 1x64x64, 64->64: 2.23 -> 1.76 ms; 32x8x8, 16->16:
    0.33 -> 0.14 ms (system SVM). PoCL 3.0: 1x64x64, 64->64: 2.39 -> 2.01 ms;
    1x128x128, 32->16: 1.84 -> 1.23; 32x8x8, 16->16: 0.70 -> 0.38 (host-pointer
    buffers).

    Not on a simulator (Oclgrind calls itself a CPU too): its uninitialised-value
    checker does not see what the host wrote into a host-pointer buffer, and
    would flag every value read from one.
    """
    return bool(facts(device).type & cl.device_type.CPU) and not is_simulator(device)


def uses_system_svm(device: cl.Device) -> bool:
    """Whether a :class:`HostArray` on ``device`` is handed to kernels as a plain
    host pointer (fine-grained system SVM) rather than in a host-pointer buffer."""
    return facts(device).system_svm


def result_allocator(queue: cl.CommandQueue, nbytes: int):
    """How a host-path result of ``nbytes`` on ``queue`` is allocated when
    :func:`works_in_host_memory` and the device has no system SVM (with it,
    kernels take any NumPy array, so the caller asks for none): None for
    :func:`numpy.empty`, or ``empty(shape, dtype)``, a NumPy array in
    fine-grained buffer SVM from the queue's pool (:func:`svm_pool`).

    Without system SVM (PoCL), a result in a host-pointer buffer must be mapped
    and unmapped before the host reads it, two more commands through the
    driver's scheduler; a NumPy array in fine-grained buffer SVM needs neither,
    only the wait. The whole host call with / without on Debian's PoCL 3.1
    (2-core EPYC, ``benchmarks/svm_results_ab.py 1:0``, 41 rounds of 20
    calls, two runs): E (128 KiB result) 0.73-0.76, F (64 KiB) 0.73-0.78 back
    to back, 0.77-0.83 and 0.77-0.80 each right after an onnxruntime call
    (``--after-ort``). Larger results (``--limit 8388608 --workloads A C D
    --rounds 9``): A (1 MiB) 0.99-1.00, C (1 MiB) 0.93-0.96, D (4.4 MiB)
    1.39-1.42, a loss not understood; hence :data:`SVM_RESULT_BYTES`.
    """
    if not 0 < nbytes <= SVM_RESULT_BYTES or not facts(queue.device).fine_grain_buffers:
        return None
    pool = svm_pool(queue)

    def empty(shape, dtype) -> np.ndarray:
        if pool.held_blocks > _HELD_BLOCKS:
            pool.free_held()
        count = math.prod(shape)
        # The array's base holds the pooled block; it returns to the pool when
        # the array (the caller's result) is collected.
        return np.frombuffer(pool(count * np.dtype(dtype).itemsize).buf, dtype, count).reshape(shape)
    return empty


def svm_pool(queue: cl.CommandQueue):
    """A pool of fine-grained buffer SVM for :func:`result_allocator`, kept on the queue.

    ``clSVMAlloc`` took 10.3 us for 64 KiB on Debian's PoCL 3.1, the pool 0.24.
    A block returns to the pool when its array is collected, with no driver
    call (also in a forked child); the pool lets go of the blocks it holds
    beyond :data:`_HELD_BLOCKS` (at most that many times :data:`SVM_RESULT_BYTES`).
    """
    with _pools_lock:
        pool = getattr(queue, "_atrous_cl_svm_pool", None)
        if pool is None:
            import pyopencl.tools

            pool = queue._atrous_cl_svm_pool = pyopencl.tools.SVMPool(
                pyopencl.tools.SVMAllocator(queue.context, alignment=_SVM_ALIGNMENT,
                                            flags=_FINE_GRAIN))
        return pool


#: The largest host-path result (bytes) :func:`result_allocator` puts in SVM.
SVM_RESULT_BYTES = 1 << 18

#: Free blocks an SVM pool keeps for later results (16 MiB at most).
_HELD_BLOCKS = 64

_FINE_GRAIN = cl.svm_mem_flags.READ_WRITE | cl.svm_mem_flags.SVM_FINE_GRAIN_BUFFER

#: Alignment of those results: a cache line, and the widest vector (16
#: doubles) a kernel may load from them.
_SVM_ALIGNMENT = 128


class HostArray:
    """A C-contiguous, aligned NumPy array that kernels on a CPU device use in place.

    It offers what the launches take from a ``pyopencl.array.Array``
    (``base_data``, ``offset``, ``size``, ``dtype``, ``events``, ``add_event``)
    and ``get``, which waits for its writers and returns the array itself. ``base_data`` is the array as
    system SVM where the device has it (:func:`uses_system_svm`) or the array
    lies in the context's fine-grained buffer SVM (:func:`result_allocator`;
    the caller says which with ``svm``), else a buffer created with ``CL_MEM_USE_HOST_PTR``
    on it; either is made on first use (OpenCL has no empty buffers). Such a
    buffer's memory is defined on the host only once mapped, so ``get`` maps
    and unmaps a ``written`` one.
    """

    offset = 0

    def __init__(self, array: np.ndarray, queue: cl.CommandQueue, written: bool = False,
                 svm: bool | None = None):
        self.array, self.written = array, written
        self.size, self.dtype, self.shape = array.size, array.dtype, array.shape
        # svm: whether kernels take the array as an SVM pointer, when the caller knows.
        self._svm = uses_system_svm(queue.device) if svm is None else svm
        self._queue = queue  # its context makes the buffer, if one is needed
        self._data = None
        self.events: list[cl.Event] = []  # the launches that write it (see launch.transpose)

    def add_event(self, event: cl.Event) -> None:
        self.events.append(event)

    def copy_bytes(self, raw: bytearray) -> None:
        """Use ``raw``, a copy of the array's bytes as a launch compared them, in place of
        the array, which another thread could change while a kernel reads it. ``raw``
        must outlive the call (this object keeps it) and stay unchanged."""
        self.array = np.frombuffer(raw, self.dtype).reshape(self.shape)
        self._data = None

    @property
    def base_data(self):
        if self._data is None:
            if self._svm:
                self._data = cl.SVM(self.array)
            else:
                access = cl.mem_flags.READ_WRITE if self.written else cl.mem_flags.READ_ONLY
                self._data = cl.Buffer(self._queue.context, cl.mem_flags.USE_HOST_PTR | access,
                                       hostbuf=self.array)
        return self._data

    def get(self, queue: cl.CommandQueue) -> np.ndarray:
        """The array, once the launches that write it (``events``) are done; a buffer's
        memory mapped and unmapped after them, so that the host sees what they wrote.

        Waits for those commands, not for the queue: an out-of-order queue may hold
        other threads' work, or work behind a user event, that this result does not
        need. Every kernel of a call runs before its last launch, which each result
        waits for (:func:`atrous_cl.launch.transpose`), so the inputs it used in place
        are free again too."""
        wait = list(self.events)
        if self.written and self._data is not None and not self._svm:
            # After its writers: on an out-of-order queue a map need not wait.
            mapped, _ = cl.enqueue_map_buffer(queue, self._data, cl.map_flags.READ, 0,
                                              self.shape, self.dtype, wait_for=self.events)
            wait.append(mapped.base.release(queue))
        if wait:
            cl.wait_for_events(wait)
        return self.array


class Upload:
    """A host input copied to a device buffer, for a device that does not use host memory
    in place (every device's device API; GPUs' host API too): at once (``now``), or
    when a launch first reads ``base_data``, so that filters whose packed copy a launch
    reuses are never copied at all.

    It offers what the launches take from a ``pyopencl.array.Array`` (``base_data``,
    ``offset``, ``size``, ``dtype``, ``shape``, ``events``) and ``array``, the host
    array, whose bytes a launch compares; a launch that reads ``base_data`` takes
    ``events`` after it, which then hold the copy's.

    A host-API call waits for its results, and through their events for every copy,
    so its copies are enqueued without a wait, into a buffer from ``allocator``
    (:func:`memory_pool`); pyopencl keeps the host array until each is done. A
    device-API call (``at_once``) returns before its kernels run, and its caller may
    change a host input at once: its buffer is made with ``CL_MEM_COPY_HOST_PTR``,
    so the driver copies the array as it makes it, with nothing queued that could
    wait behind the queue's earlier work (or hold a launch's lock meanwhile).

    A bare buffer, not a ``pyopencl.array.Array``: ``to_device`` took 62 us for
    128 KiB where the pool and the copy took 18 (Intel's runtime, ad hoc).
    """

    offset = 0

    def __init__(self, array: np.ndarray, queue: cl.CommandQueue, allocator=None, *,
                 now: bool = False, at_once: bool = False, what: str = "an input"):
        self.array = array
        self.size, self.dtype, self.shape = array.size, array.dtype, array.shape
        self._queue, self._allocator = queue, allocator
        self._at_once, self._what = at_once, what
        self._data = None
        self.events: list[cl.Event] = []
        if now:
            self.base_data  # noqa: B018 (the copy, made or enqueued)

    @property
    def copied(self) -> bool:
        """Whether the copy was made or enqueued (``base_data`` read)."""
        return self._data is not None

    def copy_bytes(self, raw: bytearray) -> None:
        """Copy ``raw``, the array's bytes as a launch compared them, rather than the array,
        which another thread could change before an enqueued copy reads it (before
        ``base_data`` is first read: see ``copied``)."""
        self.array = np.frombuffer(raw, self.dtype).reshape(self.shape)

    @property
    def base_data(self):
        if self._data is None and self.size:
            try:
                if self._at_once:
                    data = _device_buffer(self._queue, None, self.array.nbytes, self.array)
                else:
                    data = _device_buffer(self._queue, self._allocator, self.array.nbytes)
                    self.events.append(cl.enqueue_copy(self._queue, data, self.array,
                                                       is_blocking=False))
            except cl.Error as e:
                raise DeviceError(f"copying {self._what} ({self.array.nbytes} bytes) to "
                                  f"{describe(self._queue.device)} failed: {e}",
                                  status=status_name(e)) from e
            self._data = data
        return self._data

    def wait(self) -> None:
        """Wait for the copy, if one was enqueued (the GIL released meanwhile: pyopencl's
        event would wait holding it when dropped)."""
        if self.events:
            cl.wait_for_events(self.events)


class Download:
    """A host-path result on a device that does not use host memory in place (GPUs): a
    device buffer (from ``allocator``, :func:`memory_pool`, where given) that the
    launches write, as they write a ``pyopencl.array.Array`` (``base_data``,
    ``offset``, ``size``, ``dtype``, ``nbytes``, ``events``, ``add_event``), and
    ``get``, which copies it into a new NumPy array once its writers are done.
    ``pyopencl.array.empty`` took 23 us where the pool took 0.4 (ad hoc)."""

    offset = 0

    def __init__(self, shape: tuple[int, ...], dtype, queue: cl.CommandQueue, allocator=None):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.size = math.prod(self.shape)
        self.nbytes = self.size * self.dtype.itemsize
        self.base_data = _device_buffer(queue, allocator, self.nbytes) if self.nbytes else None
        self.events: list[cl.Event] = []

    def add_event(self, event: cl.Event) -> None:
        self.events.append(event)

    def get(self, queue: cl.CommandQueue) -> np.ndarray:
        host = np.empty(self.shape, self.dtype)
        if self.nbytes:
            cl.enqueue_copy(queue, host, self.base_data, wait_for=self.events, is_blocking=True)
        return host


def _device_buffer(queue: cl.CommandQueue, allocator, nbytes: int, copy_of=None):
    """A new buffer of ``nbytes`` in ``queue``'s context: from ``allocator`` where given, else
    made by the driver, holding a copy of the host array ``copy_of`` where given."""
    if copy_of is not None:
        return cl.Buffer(queue.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                         hostbuf=copy_of)
    return (allocator(nbytes) if allocator is not None
            else cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, nbytes))


def drain(queue: cl.CommandQueue) -> None:
    """After a failure in a host call: wait for what was enqueued,
    which may still use host arrays in place, so none is freed under a running kernel."""
    try:
        queue.finish()
    except cl.Error:
        pass


#: pyopencl's SVM pointer type, where its OpenCL headers have SVM (2.0).
_SVM_POINTER = getattr(cl, "SVMPointer", ())


def fill(queue: cl.CommandQueue, array, value, wait_for=()) -> cl.Event | None:
    """Set every element of a C-contiguous device array (or a :class:`HostArray`) to ``value``.

    Uses ``clEnqueueFillBuffer`` with a one-element pattern on ``queue``, after
    ``wait_for``, so it works for every dtype (pyopencl's own ``fill`` compiles
    a kernel, which float16 cannot have without ``cl_khr_fp16``); the array
    gets the event, which is returned. An SVM array (which clEnqueueFillBuffer does
    not take) gets pyopencl's fill kernel on the value's bits. A HostArray, fresh and in
    no kernel's hands, is filled on the host (None is returned).
    """
    if array.size == 0:
        return None
    if isinstance(array, HostArray):
        array.array.fill(value)
        return None
    pattern = np.array(value, dtype=array.dtype)
    if isinstance(array.base_data, _SVM_POINTER):
        # clEnqueueFillBuffer takes a cl_mem only, and clEnqueueSVMMemFill no offset in
        # pyopencl: pyopencl's fill kernel, on the value's bits (float16 needs no
        # cl_khr_fp16 then).
        bits = np.dtype(f"u{array.dtype.itemsize}")
        view = array.view(bits)
        view.fill(pattern.view(bits)[()], queue=queue, wait_for=list(wait_for))
        event = view.events[-1]
        array.add_event(event)
        return event
    event = cl.enqueue_fill_buffer(queue, array.base_data, pattern, array.offset, array.nbytes,
                                   wait_for=list(wait_for))
    array.add_event(event)
    return event
