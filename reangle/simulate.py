"""Memory and FLOPs of a piece of code at any size without running it (fake tensors).

Public API::

    Simulation()                          # context: FakeTensorMode + live bytes + FLOPs
    LiveBytes(round_to=512)               # dispatch mode: bytes of the tensor storages alive, and their peak
    measured_peak_bytes(fn) -> int        # real execution: peak of the CPU allocator's own events (profiler)
    compare_with_real(build, step) -> (simulated, measured)  # peak bytes a step adds, fake vs real CPU
    tensor_bytes(module) -> int           # bytes of a module's parameters and buffers
    materialize(module) -> module         # meta-device weights -> (fake) tensors of the current mode
    extrapolate_depth(run, depth, base=1) # run(n) at n = base, 2 base blocks -> what run(depth) returns
    memoize_calls(module)                 # repeated gradient-free calls of its modules simulated once
    measured(value) -> value              # a quantity extrapolate_depth extrapolates (sections, tensor_bytes)

Models are built on the meta device (dtype casts, LoRA injection and other ``Module.to`` calls
work there) and then materialized inside a :class:`Simulation`, where their weights become fake
CPU tensors counted as resident memory.

Accounting follows a CUDA run: every storage an op allocates is counted from its creation
until its last reference dies (autograd's saved tensors included), rounded up to the caching
allocator's 512-byte blocks; views of an input's storage are free. Scaled dot-product
attention runs as the fused kernel (on fake CPU tensors: ``_scaled_dot_product_flash_attention_for_cpu``,
which keeps the output and the log-sum-exp for backward, as CUDA's flash/memory-efficient
kernels do; no L x L matrix). Data-dependent scalars of fake tensors (``.item()``, ``bool()``)
read as True for booleans and 1 otherwise, so input checks pass, an optimizer's step count is
valid and searches pick candidate 1; the work done does not depend on those values in the
phases simulated. Ops whose output size depends on values (``nonzero``, ``bincount``, boolean
indexing; MEt3R's rasterizer) keep every position: an upper bound of their memory and work.
Module conversions (``module.to(dtype)``, as diffusers' layerwise casting does before and after each
layer) replace a fake parameter by the converted one (torch swaps them in place, which fake tensors
do not allow); the bytes alive are the same. What it cannot see: the allocator's reserve above allocation
(fragmentation, block caching), CUDA context and library workspaces (cuBLAS, cuDNN).

FLOPs are ``torch.utils.flop_counter`` counts (matmuls, convolutions, attention), i.e.
hardware FLOPs: recomputation under gradient checkpointing is included.

Repeated calls (:func:`memoize_calls`): a module (or one of the same structure: classes,
attributes, parameter layouts) called again with inputs of the same layouts, without gradients,
does on fake tensors exactly what it did the first time (no values exist), so the call is replayed: its FLOPs and its peak above the bytes live at the call are added and new
outputs of the recorded layouts are allocated. A call that keeps anything but its outputs, returns
a view of an input or changes its arguments (caches in lists) is never replayed.

Depth extrapolation (:func:`extrapolate_depth`): a model of ``n`` identical blocks costs ``a + b n``
FLOPs exactly, and its weights, saved activations (one checkpointed input per block) and the
peak of a section are ``a + b n`` bytes as long as the peak falls at the same point of the same
block; so a phase is simulated with 1 and 2 blocks and every measured quantity is extrapolated
to the full depth (checked against full-depth simulations in tests/test_simulate.py and
benchmarks/RESULTS.md).
"""
from __future__ import annotations

import functools
import weakref
from fractions import Fraction
from typing import Callable, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count
from torch.utils.weak import WeakIdKeyDictionary

GB = 1e9
GIB = 2**30
T = TypeVar("T")


class _DepthRecord:
    """The quantities a run at ``base`` blocks measured, in order (``values``); replayed at ``2 base``
    blocks, each new quantity is returned extrapolated to ``depth`` blocks."""

    def __init__(self, base: int, depth: int):
        self.base, self.depth = base, depth
        self.values: list = []
        self.replay: list | None = None

    def __call__(self, value):
        if self.replay is None:
            self.values.append(value)
            return value
        if not self.replay:
            raise RuntimeError("depth extrapolation: the run at twice the depth measured more quantities "
                               "than the first")
        first = self.replay.pop(0)
        out = Fraction(first) + (Fraction(value) - Fraction(first)) * (self.depth - self.base) / self.base
        return int(out) if out.denominator == 1 and isinstance(value, int) else float(out)


_RECORD: _DepthRecord | None = None


def measured(value):
    """A quantity a simulated phase measures: returned as is, or under :func:`extrapolate_depth`
    recorded (first run) or extrapolated to the full depth (second run)."""
    return value if _RECORD is None else _RECORD(value)


def extrapolate_depth(run: Callable[[int], T], depth: int, base: int = 1) -> T:
    """What ``run(depth)`` returns, from ``run(base)`` and ``run(2 base)``: ``run(n)`` simulates with ``n``
    repeated blocks; every quantity it measures (:class:`Section` numbers, :func:`tensor_bytes`, or
    passed through :func:`measured`) is linear in ``n`` and taken to ``depth``, so the result,
    computed from those quantities by ``run``'s own code, is the full-depth one."""
    global _RECORD
    if _RECORD is not None:
        raise RuntimeError("depth extrapolations do not nest")
    record = _RECORD = _DepthRecord(base, depth)
    try:
        run(base)
        record.replay = list(record.values)
        out = run(2 * base)
        if record.replay:
            raise RuntimeError("depth extrapolation: the run at twice the depth measured fewer quantities "
                               "than the first")
        return out
    finally:
        _RECORD = None


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash kernel does the work of CUDA's: the same count as ``_scaled_dot_product_flash_attention``."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_flash_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                              **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _is_fake(tensor: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


def _all_positions(mask: torch.Tensor) -> torch.Tensor:
    """``nonzero`` of a fake tensor: every position, ``(numel, ndim)``."""
    return torch.empty((mask.numel(), mask.ndim), dtype=torch.long, device=mask.device)


def _long_indices(indices):
    """Boolean masks among ``aten.index`` indices as long indices of every position."""
    out = []
    for i in indices:
        if i is not None and i.dtype == torch.bool:
            out.extend(_all_positions(i).unbind(1))
        else:
            out.append(i)
    return out


# Ops of fake tensors whose output size depends on values: the largest size (an upper bound).
_DATA_DEPENDENT_SHAPES = {
    torch.ops.aten.nonzero.default: lambda x: _all_positions(x),
    torch.ops.aten.bincount.default: lambda x, weights=None, minlength=0: torch.zeros(
        max(int(minlength), x.numel()), dtype=torch.long if weights is None else weights.dtype, device=x.device),
    torch.ops.aten.index.Tensor: lambda x, indices: (x, _long_indices(indices)),
}


def _strided(t) -> bool:
    """A dense tensor (sparse ones are made of dense index/value tensors, counted themselves)."""
    return isinstance(t, torch.Tensor) and t.layout == torch.strided


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created under this mode that are still alive (``live``), the
    maximum ``peak`` since the last :meth:`reset_peak` (sizes rounded up to ``round_to``) and the
    ``flops`` of the ops run (torch.utils.flop_counter's formulas; counted here rather than by
    ``FlopCounterMode``, whose module hooks keep outputs alive and would inflate the peak)."""

    def __init__(self, round_to: int = 512):
        super().__init__()
        self.round_to = round_to
        self.live = 0
        self.peak = 0
        self.flops = 0
        self._seen = WeakIdKeyDictionary()

    def reset_peak(self) -> None:
        self.peak = self.live

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def _add(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":  # a model not yet materialized (e.g. converted on meta): no memory
            return
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        nbytes = -(-storage.nbytes() // self.round_to) * self.round_to
        self._seen[storage] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and _is_fake(args[0]):
            # a fake tensor has no value: checks read as passed (True), numbers as 1 (an optimizer's step count)
            return True if args[0].dtype == torch.bool else 1
        if func in _DATA_DEPENDENT_SHAPES and _is_fake(args[0]):
            args = _DATA_DEPENDENT_SHAPES[func](*args, **kwargs)
            if isinstance(args, torch.Tensor):
                return self._returned(func, (), {}, args)
            kwargs = {}
        return self._returned(func, args, kwargs, func(*args, **kwargs))

    def _returned(self, func, args, kwargs, out):
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0] if _strided(t)}
        for t in tree_flatten(out)[0]:
            if _strided(t) and _storage_key(t) not in inputs:
                self._add(t)
        return out


_MODULE_APPLY = torch.nn.Module._apply


def _convert_fake(module: torch.nn.Module, fn, recurse: bool = True):
    """``Module._apply`` for modules with fake parameters: each parameter (buffer) replaced by ``fn`` of it
    (a no-op conversion keeps it); modules without fake parameters convert as torch does."""
    if recurse:
        for child in module.children():
            child._apply(fn)
    if not any(p is not None and _is_fake(p) for p in module._parameters.values()):
        return _MODULE_APPLY(module, fn, recurse=False)
    with torch.no_grad():
        for key, p in module._parameters.items():
            if p is not None and (new := fn(p)) is not p:
                module._parameters[key] = torch.nn.Parameter(new, requires_grad=p.requires_grad)
        for key, b in module._buffers.items():
            if b is not None:
                module._buffers[key] = fn(b)
    return module


_UNSAFE = object()  # a call signature whose calls are never replayed


def _signature(tree) -> tuple:
    """Hashable description of call arguments: tensor layouts and plain values (``TypeError`` otherwise)."""
    leaves, spec = tree_flatten(tree)
    out = [str(spec)]
    for x in leaves:
        if isinstance(x, torch.Tensor):
            out.append((tuple(x.shape), x.stride(), x.dtype, x.device.type, x.requires_grad))
        elif x is None or isinstance(x, (bool, int, float, str, torch.dtype)):
            out.append(x)
        else:
            raise TypeError(type(x))
    return tuple(out)


def _attribute(value):
    """What a module attribute contributes to its structure: plain values themselves, tensors their
    layout, containers their items, other objects their type."""
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return value
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.requires_grad)
    if isinstance(value, (list, tuple)):
        return tuple(_attribute(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _attribute(v)) for k, v in value.items())
    return type(value).__qualname__


def _structure(module: torch.nn.Module) -> int:
    """Hash of everything a module's forward can depend on besides its inputs' values: classes,
    attributes (flags, sizes) and parameter/buffer layouts of it and its submodules, in order."""
    parts = []
    for name, m in module.named_modules():
        parts.append((name, type(m).__qualname__, m.training))
        parts.extend((k, _attribute(v)) for k, v in vars(m).items()
                     if k not in ("_modules", "forward") and not k.endswith("hooks"))
    return hash(tuple(parts))


class _CallMemo:
    """Recorded gradient-free module calls (see :func:`memoize_calls`), shared by every
    :class:`Simulation`: a call is keyed by its module's structure, not its identity."""

    def __init__(self):
        self.entries: dict = {}

    def call(self, live: "LiveBytes", module: torch.nn.Module, forward, args, kwargs):
        if torch.is_grad_enabled() and module._memo_trainable:
            return forward(*args, **kwargs)
        try:
            key = (_structure(module), torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"),
                   _signature((args, kwargs)))
        except TypeError:
            return forward(*args, **kwargs)
        self.live = live
        entry = self.entries.get(key)
        if entry is _UNSAFE:
            return forward(*args, **kwargs)
        if entry is not None:
            return self._replay(entry)
        out, self.entries[key] = self._record(forward, args, kwargs)
        return out

    def _record(self, forward, args, kwargs):
        live = self.live
        # the arguments as they were, without keeping alive a tensor the call drops from a list it was given
        inputs = tree_flatten((args, kwargs))[0]
        input_storages = {_storage_key(t) for t in inputs if _strided(t)}
        before = [weakref.ref(x) if isinstance(x, torch.Tensor) else (type(x), x) for x in inputs]
        del inputs
        start, outer_peak, flops = live.live, live.peak, live.flops
        live.peak = start
        out = forward(*args, **kwargs)
        peak, live.peak = live.peak, max(outer_peak, live.peak)
        leaves, spec = tree_flatten(out)
        storages: dict[int, int] = {}
        layouts = []
        for x in leaves:
            if not _strided(x) or _storage_key(x) in input_storages or x.requires_grad:
                return out, _UNSAFE
            group = storages.setdefault(_storage_key(x), len(storages))
            layouts.append((x.shape, x.stride(), x.storage_offset(), x.dtype, group))
        sizes = [0] * len(storages)
        for x in leaves:
            sizes[storages[_storage_key(x)]] = x.untyped_storage().nbytes()
        kept = sum(-(-n // live.round_to) * live.round_to for n in sizes)
        after = tree_flatten((args, kwargs))[0]
        if live.live - start != kept or len(after) != len(before) or any(
                (b() is not a) if isinstance(b, weakref.ref) else (b != (type(a), a)) for a, b in zip(after, before)):
            return out, _UNSAFE
        return out, (spec, layouts, sizes, live.flops - flops, peak - start)

    def _replay(self, entry):
        spec, layouts, sizes, flops, peak = entry
        live = self.live
        live.flops += flops
        live.peak = max(live.peak, live.live + peak)
        bases = [torch.empty(n, dtype=torch.uint8) for n in sizes]
        leaves = [bases[group].view(dtype).as_strided(shape, stride, offset)
                  for shape, stride, offset, dtype, group in layouts]
        return tree_unflatten(leaves, spec)


_SIMULATION: "Simulation | None" = None
_MEMO = _CallMemo()


def memoize_calls(module: torch.nn.Module) -> torch.nn.Module:
    """Calls of ``module`` and its submodules inside a :class:`Simulation` that repeat an earlier call's
    input layouts without gradients (``no_grad``, or nothing trainable) are replayed, not simulated
    again (see the module docstring); outside a simulation they run as usual."""
    for sub in module.modules():
        if "_memo_trainable" in vars(sub):
            continue
        sub._memo_trainable = any(p.requires_grad for p in sub.parameters())
        forward = sub.forward

        @functools.wraps(forward)
        def memo_forward(*args, _sub=sub, _forward=forward, **kwargs):
            if _SIMULATION is None or _SIMULATION.fake_mode is None:
                return _forward(*args, **kwargs)
            return _MEMO.call(_SIMULATION.live, _sub, _forward, args, kwargs)
        sub.forward = memo_forward
    return module


class Simulation:
    """Fake tensors with live-byte and FLOP accounting. Build models and inputs inside it, then
    measure sections with :meth:`section`::

        with Simulation() as sim:
            model = build()                     # counted as resident
            with sim.section() as s:
                model(x).sum().backward()
            s.peak_bytes, s.flops, s.resident_bytes
    """

    def __init__(self, fake: bool = True, round_to: int = 512, allow_constants: bool = True):
        from torch._subclasses.fake_tensor import FakeTensorMode

        # allow_constants: real tensors made outside (e.g. a scheduler's tables) may enter ops; they are not counted
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=allow_constants) if fake else None
        self.live = LiveBytes(round_to)

    def __enter__(self) -> "Simulation":
        global _SIMULATION
        if self.fake_mode is not None:
            self.fake_mode.__enter__()
            torch.nn.Module._apply = _convert_fake
        self.live.__enter__()
        self._outer, _SIMULATION = _SIMULATION, self
        return self

    def __exit__(self, *exc) -> None:
        global _SIMULATION
        _SIMULATION = self._outer
        self.live.__exit__(*exc)
        if self.fake_mode is not None:
            torch.nn.Module._apply = _MODULE_APPLY
            self.fake_mode.__exit__(*exc)

    def section(self) -> "Section":
        return Section(self)


class Section:
    """One measured stretch of a :class:`Simulation`: ``resident_bytes`` at its start, ``peak_bytes``
    (absolute, resident included) and ``flops`` inside it."""

    def __init__(self, sim: Simulation):
        self.sim = sim

    def __enter__(self) -> "Section":
        import gc

        gc.collect()
        self.resident_bytes = measured(self.sim.live.live)
        self.sim.live.reset_peak()
        self._flops0 = self.sim.live.flops
        return self

    def __exit__(self, *exc) -> None:
        self.flops = measured(self.sim.live.flops - self._flops0)
        self.peak_bytes = measured(self.sim.live.peak)
        self.end_bytes = measured(self.sim.live.live)


def measured_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak growth of allocated bytes while ``fn()`` really runs, from the allocator events the
    PyTorch profiler records (every allocation and free of the CPU allocator, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def materialize(module: torch.nn.Module) -> torch.nn.Module:
    """Replace ``module``'s meta parameters and buffers by new tensors of the same shape, dtype and
    ``requires_grad`` on the CPU (fake ones inside a :class:`Simulation`); shared tensors stay shared."""
    made: dict[int, torch.Tensor] = {}

    def new(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            empty = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            made[id(t)] = torch.nn.Parameter(empty, requires_grad=t.requires_grad) \
                if isinstance(t, torch.nn.Parameter) else empty
        return made[id(t)]

    for sub in module.modules():
        for name, p in sub._parameters.items():
            if p is not None and p.is_meta:
                sub._parameters[name] = new(p)
        for name, b in sub._buffers.items():
            if b is not None and b.is_meta:
                sub._buffers[name] = new(b)
    return module


def compare_with_real(build: Callable[[], torch.nn.Module], step: Callable[[torch.nn.Module], object]
                      ) -> tuple[int, int]:
    """Peak bytes ``step(model)`` adds above the built model: simulated (``build()`` on meta, materialized
    fake, exact byte sizes) and measured on the CPU (:func:`measured_peak_bytes`)."""
    kept = []
    model = build()
    measured = measured_peak_bytes(lambda: kept.append(step(model)))
    with torch.device("meta"):
        meta = build()
    with Simulation(round_to=1) as sim:
        fake = materialize(meta)
        with sim.section() as s:
            kept.append(step(fake))
    return s.peak_bytes - s.resident_bytes, measured


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages of ``tensors`` (not a :func:`measured` quantity)."""
    return sum({_storage_key(t): t.untyped_storage().nbytes() for t in tensors}.values())


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (distinct storages), :func:`measured`."""
    return measured(storage_bytes([*module.parameters(), *module.buffers()]))
