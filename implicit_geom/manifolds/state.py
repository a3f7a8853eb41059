"""The state that defines a space's zero set: a content fingerprint of its
parameters, buffers and settings (and of its components'), a cheap version
key, and :class:`_StateWatch`, which tells caches (the geodesic sample graph,
a union's overlap check) whether that state moved. A checkpoint of a union
density stores the portable fingerprint of its pieces."""

import hashlib
import itertools
import numbers
import weakref

import torch

#: Attributes that count caches, not state (bumped by invalidate_caches):
#: in the cheap key (:func:`_state_version`), not in the content hash.
_CACHE_COUNTERS = frozenset({"_cache_generation"})
#: Attributes set only during a call (ImplicitManifold.local_scale's factor):
#: no state at all; seen, they made a cache built inside a call stale outside.
_CALL_SETTINGS = frozenset({"_call_scale"})


def _walk_state(space, portable=False, params=True, plain_by_name=True):
    """What defines a space's zero set, in a fixed order: ``("tensor", name,
    t)`` for its and its components' parameters and buffers (non-persistent
    ones too: bounds) and tensor attributes, ``("setting", text)`` for type
    names, scalar settings (radii, tolerances) and plain callables' identity
    (a closure's captured values are not visible; rebuild the manifold after
    changing them).

    ``portable``: what a checkpoint can store and compare in another process
    (see :func:`_state_fingerprint`): type names, the modules' state dicts,
    plain callables (:func:`_is_plain_f`) by qualified name and content
    (:func:`_plain_f_text`) and, with ``params``, each object's defining
    parameters that are no tensors of its state dict (its
    ``_fingerprint_params()``: a sympy manifold's expressions, a wrapped
    geomstats space's class and sizes, an MDF's radial weight); no working
    settings, no ids. ``params=False`` is the walk of fingerprint version 1
    (checkpoints recorded before them). ``plain_by_name=False`` (version 3)
    marks where a plain callable sits and nothing of it: a checkpoint then
    compares its values at recorded points instead (see
    :func:`implicit_geom.learning.checkpoint.manifold_identity`)."""
    seen, seen_tensors = set(), set()

    def tensor(name, val):
        if id(val) not in seen_tensors:
            seen_tensors.add(id(val))
            yield "tensor", name, val

    def visit(obj, depth=0):
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        yield "setting", type(obj).__name__
        hook = getattr(obj, "_fingerprint_params", None) if portable and params else None
        if callable(hook):
            for key, val in sorted(hook().items()):
                if torch.is_tensor(val):
                    yield "tensor", f"{key}", val  # (also when the state dict has it)
                else:
                    yield "setting", f"{key}={_portable_repr(val)}"
        if isinstance(obj, torch.nn.Module):
            # (Children are visited below: their tensors once, not at every level.)
            named = (obj.state_dict(keep_vars=True).items() if portable else
                     itertools.chain(obj.named_parameters(recurse=False),
                                     obj.named_buffers(recurse=False)))
            for name, val in named:
                yield from tensor(name, val)
        for key, val in sorted(getattr(obj, "__dict__", {}).items()):
            if key in _CALL_SETTINGS:
                continue
            if portable:
                if _is_plain_f(key, val):
                    if plain_by_name:
                        yield from (("setting", text) for text in _plain_f_text(key, val, params))
                    else:
                        yield "setting", f"{key}:plain callable"
                continue
            if isinstance(val, (bool, int, float, str)):
                yield "setting", f"{key}={val!r}"
            elif torch.is_tensor(val):
                yield from tensor(key, val)
            elif isinstance(val, torch.nn.Module):
                yield from visit(val, depth + 1)
            elif isinstance(val, (list, tuple)):
                for item in val:
                    if torch.is_tensor(item):
                        yield from tensor(key, item)
                    elif isinstance(item, torch.nn.Module):
                        yield from visit(item, depth + 1)
            elif _is_plain_f(key, val):
                yield "setting", f"{key}@{id(val)}"
        for child in getattr(obj, "_modules", {}).values():
            if child is not None:
                yield from visit(child, depth + 1)

    yield from visit(space)


def _is_plain_f(key, val):
    """Whether attribute ``key`` holding ``val`` is a plain callable F (a
    function, lambda, partial, callable object: no module, no state dict)."""
    return key in ("_f", "f") and callable(val) and not isinstance(val, torch.nn.Module)


def _plain_f_text(key, fn, content=True):
    """A plain F as fingerprint versions 1 and 2 saw it: its module and
    qualified name and (``content``, version 2) :func:`_callable_content`."""
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    out = [f"{key}@{getattr(fn, '__module__', '')}.{name}"]
    if content:
        out.append(f"{key}:{_callable_content(fn)}")
    return out


def _portable_repr(val):
    """A parameter value as text that is the same in every process: numbers
    by ``repr`` (exact), containers item by item, tensors as float64 lists
    (long ones as their shape and a hash of those values)."""
    if torch.is_tensor(val):
        val = val.detach().cpu()
        val = val.double() if val.is_floating_point() else val
        if val.numel() > 64:  # e.g. data a plain F captured
            data = val.contiguous().numpy().tobytes()
            return f"tensor{tuple(val.shape)}:{hashlib.sha1(data).hexdigest()}"
        return repr(val.tolist())
    if isinstance(val, (list, tuple)):
        return "[" + ", ".join(_portable_repr(v) for v in val) + "]"
    if isinstance(val, dict):
        return "{" + ", ".join(f"{k!r}: {_portable_repr(v)}" for k, v in sorted(val.items())) + "}"
    # Numbers as Python's own: numpy 2 writes np.float64(1.0) where numpy 1
    # wrote 1.0 (a closure over a numpy scalar was refused across them).
    if isinstance(val, bool):
        return repr(val)
    if isinstance(val, numbers.Integral):
        return repr(int(val))
    if isinstance(val, numbers.Real):
        return repr(float(val))
    if isinstance(val, numbers.Complex):
        return repr(complex(val))
    return repr(val)


def _code_numbers(code):
    """The numbers among a code object's constants (and its nested ones'), in order."""
    out = []
    for const in code.co_consts:
        if isinstance(const, (int, float, complex)):  # bool too: keepdim=True
            out.append(const)
        elif hasattr(const, "co_consts"):
            out.extend(_code_numbers(const))
    return out


def _callable_content(fn):
    """What a plain Python F computes with, beyond its name: the numbers in
    its code, its defaults and closure values, and the numbers and tensors
    among the globals it reads (two lambdas, or two closures of one factory,
    ``make(r=1)`` and ``make(r=2)``, share a qualified name). Only numbers
    and tensors are read: a captured object or a called function is seen by
    type name only. The code's constants are as this Python compiles them:
    another Python version may list them otherwise (then a checkpoint is
    refused, see ``check_manifold`` of the loads)."""
    code = getattr(fn, "__code__", None)
    if code is None:  # a builtin or a callable object: its name only
        return ""

    def show(val):
        # (numbers.Number: numpy scalars too; np.float32 was seen by type name,
        # closures over np.float32(1) and (2) had equal fingerprints.)
        if isinstance(val, (numbers.Number, str)) or torch.is_tensor(val):
            return _portable_repr(val)
        return type(val).__qualname__

    cells = [c.cell_contents for c in (fn.__closure__ or ()) if _cell_filled(c)]
    names = getattr(fn, "__globals__", {})
    glob = [f"{n}={show(names[n])}" for n in code.co_names
            if n in names and (isinstance(names[n], numbers.Number)
                               or torch.is_tensor(names[n]))]
    return (f"numbers={_portable_repr(_code_numbers(code))};"
            f"defaults={[show(v) for v in (fn.__defaults__ or ())]};"
            f"closure={[show(v) for v in cells]};globals={glob}")


def _cell_filled(cell):
    try:
        cell.cell_contents
    except ValueError:  # a cell not yet assigned
        return False
    return True


def _state_fingerprint(space, settings=True, version=3):
    """Hash of what defines the zero set: parameters, buffers (bounds too),
    scalar settings (radii, tolerances) of the space and of its components,
    by content (equal for equal states, in any process, but for a plain
    callable F, named by its id; every tensor is read, a device sync on a
    GPU: :class:`_StateWatch` hashes only when :func:`_state_version` moved).

    ``settings=False`` gives the fingerprint a checkpoint can store (a union
    density's pieces): the types and the state dicts only, floating values
    taken in float64, and a plain callable F by its qualified name instead
    of its ``id`` (version 3: only where it sits). It is the same in
    another process and after the space's own save/load, ``.to(float32)``
    of exactly representable values, or a change of working settings
    (``progress``, ``name``, ``training``...), which the cache key
    (default) counts as changes. It includes the defining parameters that
    are no tensors (``_fingerprint_params``, see :func:`_walk_state`).
    ``version=1`` and ``2`` are the fingerprints checkpoints recorded
    before: 1 without those parameters (radii of a torch-built sphere were
    seen, a sympy manifold's expressions, an MDF's ``radial`` or the
    numbers of a lambda F were not), 2 with a plain F by module, qualified
    name and the numbers of its code (refused once F moved; blind to what
    a called helper, a captured network or a partial holds).
    """
    digest = hashlib.sha1()
    for item in _walk_state(space, portable=not settings, params=version >= 2,
                            plain_by_name=version <= 2):
        if item[0] == "setting":
            if item[1].split("=", 1)[0] not in _CACHE_COUNTERS:
                digest.update(item[1].encode())
        else:
            _, name, val = item
            val = val.detach().cpu()
            if settings:
                digest.update(f"{name}:{val.dtype}:{tuple(val.shape)}".encode())
            else:
                digest.update(f"{name}:{tuple(val.shape)}".encode())
                val = val.double() if val.is_floating_point() else val
            digest.update(val.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _state_version(space):
    """A cheap key of the same state, without reading any tensor: each
    tensor's identity, in-place version counter (``_version``: optimiser
    steps, ``copy_``, ``load_state_dict``), storage pointer, shape, dtype and
    device, and the settings (with the pieces' ``invalidate_caches``
    counter). Returns the key and weak references to the tensors (while they
    live, their ids are theirs). Edits through ``.data`` bypass the version
    counter: call the manifold's ``invalidate_caches()`` after them."""
    key, refs = [], []
    for item in _walk_state(space):
        if item[0] == "setting":
            key.append(item[1])
        else:
            _, name, val = item
            refs.append(weakref.ref(val))
            key.append((name, id(val), val._version, val.data_ptr(), tuple(val.shape),
                        val.dtype, str(val.device)))
    return tuple(key), refs


class _StateWatch:
    """Whether a space's state moved since :meth:`record`: the cheap
    :func:`_state_version` first, the content hash only when it moved (an
    unchanged content, e.g. a state loaded again, counts as unchanged).

    Usage: ``if watch.changed(space, *extra): ...recompute...; watch.record()``.
    Not pickled (a copy starts unrecorded).
    """

    def __init__(self):
        self.forget()

    def forget(self):
        self._key = self._refs = self._digest = self._pending = None

    def changed(self, space, *extra):
        key, refs = _state_version(space)
        key = (key, extra)
        if (key == self._key and self._refs is not None
                and all(r() is not None for r in self._refs)):
            return False
        digest = (_state_fingerprint(space), extra)
        if digest == self._digest:
            self._key, self._refs = key, refs
            return False
        self._pending = key, refs, digest
        return True

    def record(self):
        """Remember the state :meth:`changed` last saw as the checked one."""
        if self._pending is not None:
            (self._key, self._refs, self._digest), self._pending = self._pending, None

    def __getstate__(self):
        return {"recorded": False}  # not empty: unpickling calls __setstate__

    def __setstate__(self, state):
        self.forget()
