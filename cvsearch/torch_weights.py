"""Read PyTorch ``.pth`` weight files without torch and without plain pickle.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the file names.
:func:`load_state_dict` uses an unpickler that resolves only the few names a state
dict needs (``collections.OrderedDict``, the tensor-rebuilding functions and the
storage types) to harmless stand-ins of its own, and refuses every other name, so
a hostile file raises :class:`pickle.UnpicklingError` instead of running code.

Both layouts are read: the legacy one (torch < 1.6: a magic number, three small
pickles, the state dict pickle, the storage keys, then raw storages) and the zip
one (``archive/data.pkl`` with one ``archive/data/<key>`` file per storage).

Every size is checked before anything is allocated, against a budget of
``max_bytes`` (default ``MAX_BYTES``) for the file, the storages and the arrays
made from them together: the file must be a regular file within it; a pickle must
be at most ``MAX_PICKLE_BYTES`` and ``MAX_PICKLE_OPS`` opcodes (Python objects
cost more than their bytes); a zip at most ``MAX_MEMBERS`` members, each read only
up to the bytes its storage needs; a tensor's offset, sizes and strides must be
non-negative integers that stay inside its storage. The pickles are read by the
pure-Python unpickler, whose memo is a dict: a forged memo index costs nothing.
"""

from __future__ import annotations

import collections
import io
import lzma
import os
import pickle
import pickletools
import struct
import zipfile
import zlib

import numpy as np

from cvsearch.io import UnreadableFileError, read_bytes

#: Default budget: the file, its storages and the arrays made from them, together.
MAX_BYTES = 2**30
#: A state dict's pickle holds a few entries per tensor: small.
MAX_PICKLE_BYTES = 16 * 2**20
MAX_PICKLE_OPS = 2_000_000
MAX_MEMBERS = 100_000

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class RefusedPickleError(pickle.UnpicklingError, ValueError):
    """A weight file that names something other than tensors and dicts."""


class _Budget:
    """Bytes that may still be allocated; ``take`` raises before going over."""

    def __init__(self, limit: int):
        self.limit, self.left = limit, limit

    def take(self, n: int, what: str):
        if n > self.left:
            raise ValueError(f"{what} needs {n:,} bytes, beyond the limit of "
                             f"{self.limit:,} (max_bytes)")
        self.left -= n


class _StorageType(str):
    """Stand-in for ``torch.FloatStorage`` and friends: just its name."""


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """Stand-in for ``torch._utils._rebuild_tensor(_v2)``: a lazy view spec."""
    return _TensorSpec(storage, offset, size, stride)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _TensorSpec(collections.namedtuple("_TensorSpec", "storage offset size stride")):
    def to_array(self, storages: dict, budget: _Budget) -> np.ndarray:
        size, stride = self.size, self.stride
        if (not isinstance(size, tuple) or not isinstance(stride, tuple)
                or len(size) != len(stride) or len(size) > 32
                or not all(map(_is_count, size + stride)) or not _is_count(self.offset)):
            raise ValueError("a tensor's offset, sizes and strides must be "
                             "non-negative integers, as many strides as sizes")
        if self.storage not in storages:
            raise ValueError("a tensor refers to a storage that is not in the file")
        data = storages[self.storage]
        count = 1
        for n in size:  # Python ints: no overflow
            count *= n
        budget.take(count * data.dtype.itemsize, "a tensor")
        if count == 0:
            return np.zeros(size, data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= len(data):
            raise ValueError("a tensor reaches beyond its storage")
        if not size:  # a 0-d tensor: a 0-d array, not a numpy scalar
            return np.array(data[self.offset])
        itemsize = data.dtype.itemsize
        # A dimension of size 1 never moves by its stride, however large (torch
        # writes such strides); the others are bounded by the check above.
        steps = [s * itemsize if n > 1 else 0 for n, s in zip(size, stride)]
        return np.lib.stride_tricks.as_strided(data[self.offset:], size, steps).copy()


class _RestrictedUnpickler(pickle._Unpickler):
    # The pure-Python unpickler (pickle._Unpickler), not the C one: the C one
    # grows its memo to the largest index a file names (LONG_BINPUT 2**31 costs
    # 16 GiB); this one keeps the memo in a dict.
    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    }

    def __init__(self, file, storage_keys: list):
        super().__init__(file)
        self._storage_keys = storage_keys

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise RefusedPickleError(
            f"refusing to load {module}.{name}: a weight file needs only tensors "
            "and dicts")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and _is_count(pid[4])):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.200}")
        self._storage_keys.append((str(pid[2]), pid[1], pid[4]))
        return str(pid[2])


def _load_pickle(stream: io.BytesIO, keys: list):
    """One pickle from ``stream``, its opcodes counted first (nothing is built
    while counting), then unpickled by the restricted unpickler."""
    start = stream.tell()
    ops = 0
    try:
        for opcode, _, _ in pickletools.genops(stream):
            ops += 1
            if ops > MAX_PICKLE_OPS:
                raise ValueError(f"a pickle of more than {MAX_PICKLE_OPS:,} opcodes")
            if opcode.name == "STOP":
                break
    except ValueError:
        raise
    except Exception as error:  # genops' readers signal bad data variously
        raise ValueError(f"a malformed pickle ({error!r:.200})") from None
    if stream.tell() - start > MAX_PICKLE_BYTES:
        raise ValueError(f"a pickle of more than {MAX_PICKLE_BYTES:,} bytes")
    stream.seek(start)
    return _RestrictedUnpickler(stream, keys).load()


def load_state_dict(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> dict:
    """The tensors of a PyTorch state dict file, as numpy arrays.

    Parameters
    ----------
    path : path of a ``.pth`` / ``.pt`` file holding a state dict
    max_bytes : int
        Budget for the file, its storages and the arrays, together: about three
        times the size of the weights (1 GiB by default: weights up to ~340 MB).

    Returns
    -------
    dict mapping str to ndarray, in the file's order

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    RefusedPickleError
        (a pickle.UnpicklingError and a ValueError) If the file names anything
        besides tensors and dicts.
    ValueError
        If the file is not a state dict, is truncated, or any size, stride, count
        or member is out of bounds or beyond ``max_bytes``; it names the file.
    """
    path = os.fspath(path)
    budget = _Budget(max_bytes)
    try:
        data = read_bytes(path, max_bytes, limit_name="max_bytes")
        budget.take(len(data), "the file")
        stream = io.BytesIO(data)
        is_zip = zipfile.is_zipfile(stream)
        stream.seek(0)  # is_zipfile leaves the stream anywhere
        if is_zip:
            specs, storages = _read_zip(stream, budget)
        else:
            specs, storages = _read_legacy(stream, budget)
        if not isinstance(specs, dict):
            raise ValueError("it holds no state dict")
        return {str(k): v.to_array(storages, budget) for k, v in specs.items()
                if isinstance(v, _TensorSpec)}
    except RefusedPickleError as error:
        raise RefusedPickleError(f"{path}: {error}") from None
    except UnreadableFileError:
        raise
    except (EOFError, LookupError, TypeError, ValueError, AttributeError,
            ArithmeticError, pickle.UnpicklingError, zipfile.BadZipFile,
            RecursionError, struct.error,
            # zipfile's words for a damaged header (an "encrypted" or "patched"
            # member, an unknown version)
            NotImplementedError, RuntimeError) as error:
        raise ValueError(f"{path}: not a readable PyTorch state dict "
                         f"({str(error)[:300]})") from None


def _read_legacy(stream: io.BytesIO, budget: _Budget):
    keys: list = []
    magic = _load_pickle(stream, keys)
    if magic != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch file (wrong magic number)")
    _load_pickle(stream, keys)  # protocol version
    _load_pickle(stream, keys)  # system info
    specs = _load_pickle(stream, keys)
    order = _load_pickle(stream, [])
    if not isinstance(order, list):
        raise ValueError("the storage keys are not a list")
    types = {key: kind for key, kind, _ in keys}
    storages = {}
    for key in order:
        dtype = np.dtype(_STORAGE_DTYPES[types[key]]).newbyteorder("<")
        numel = int(np.frombuffer(_read_exactly(stream, 8), "<i8")[0])
        left = len(stream.getbuffer()) - stream.tell()
        if numel < 0 or numel * dtype.itemsize > left:
            raise ValueError(f"storage {key} claims {numel:,} elements, more than "
                             "the file holds")
        storages[key] = np.frombuffer(_read_exactly(stream, numel * dtype.itemsize),
                                      dtype)
    return specs, storages


def _read_zip(stream: io.BytesIO, budget: _Budget):
    keys: list = []
    with zipfile.ZipFile(stream) as archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise ValueError(f"the zip holds {len(members):,} members, more than "
                             f"{MAX_MEMBERS:,}")
        pickles = [m for m in members if m.filename.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError("the zip holds no single data.pkl")
        prefix = pickles[0].filename[:-len("data.pkl")]
        specs = _load_pickle(io.BytesIO(_read_member(archive, pickles[0],
                                                     MAX_PICKLE_BYTES, budget)), keys)
        storages = {}
        for key, kind, numel in keys:
            if key in storages:
                continue
            dtype = np.dtype(_STORAGE_DTYPES[kind]).newbyteorder("<")
            need = numel * dtype.itemsize
            raw = _read_member(archive, archive.getinfo(f"{prefix}data/{key}"), need,
                               budget)
            if len(raw) < need:
                raise ValueError(f"storage {key} is truncated")
            storages[key] = np.frombuffer(raw, dtype, count=numel)
    return specs, storages


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int,
                 budget: _Budget) -> bytes:
    """At most ``limit`` bytes of a member, charged to the budget first: a
    compressed member is inflated only that far (no zip bomb)."""
    budget.take(min(limit, info.file_size), f"member {info.filename}")
    try:
        with archive.open(info) as member:
            return member.read(min(limit, info.file_size))
    except (OSError, EOFError, RuntimeError, NotImplementedError, zlib.error,
            lzma.LZMAError) as error:  # a method or stream the header lies about
        raise ValueError(f"member {info.filename} cannot be decompressed "
                         f"({error!r:.200})") from None


def _read_exactly(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("the file ends early")
    return data
