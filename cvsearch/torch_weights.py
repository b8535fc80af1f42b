"""Read PyTorch ``.pth`` weight files without torch and without plain pickle.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the file names.
:func:`load_state_dict` uses an unpickler that resolves only the few names a state
dict needs (``collections.OrderedDict``, the tensor-rebuilding functions and the
storage types) to harmless stand-ins of its own, and refuses every other name, so
a hostile file raises :class:`pickle.UnpicklingError` instead of running code.

Both layouts are read: the legacy one (torch < 1.6: a magic number, three small
pickles, the state dict pickle, the storage keys, then raw storages) and the zip
one (``archive/data.pkl`` with one ``archive/data/<key>`` file per storage).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType(str):
    """Stand-in for ``torch.FloatStorage`` and friends: just its name."""


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """Stand-in for ``torch._utils._rebuild_tensor(_v2)``: a lazy view spec."""
    return _TensorSpec(storage, int(offset), tuple(size), tuple(stride))


class _TensorSpec(collections.namedtuple("_TensorSpec", "storage offset size stride")):
    def to_array(self, storages: dict) -> np.ndarray:
        data = storages[self.storage]
        if not self.size:
            return data[self.offset].copy()
        itemsize = data.dtype.itemsize
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if min(self.size) > 0 and (self.offset < 0 or last >= len(data)):
            raise ValueError("a tensor reaches beyond its storage")
        return np.lib.stride_tricks.as_strided(
            data[self.offset:], self.size, [s * itemsize for s in self.stride]).copy()


class _RestrictedUnpickler(pickle.Unpickler):
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
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a weight file needs only tensors "
            "and dicts")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        self._storage_keys.append((str(pid[2]), pid[1], int(pid[4])))
        return str(pid[2])


def load_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of a PyTorch state dict file, as numpy arrays.

    Parameters
    ----------
    path : path of a ``.pth`` / ``.pt`` file holding a state dict

    Returns
    -------
    dict mapping str to ndarray, in the file's order

    Raises
    ------
    pickle.UnpicklingError
        If the file names anything besides tensors and dicts.
    ValueError
        If the file is not a state dict or is truncated.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            specs, storages = _read_zip(path)
        else:
            with open(path, "rb") as file:
                specs, storages = _read_legacy(file)
        if not isinstance(specs, dict):
            raise ValueError("it holds no state dict")
        return {str(k): v.to_array(storages) for k, v in specs.items()
                if isinstance(v, _TensorSpec)}
    except (EOFError, KeyError, IndexError, TypeError, ValueError,
            zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable PyTorch state dict ({error})") from None


def _read_legacy(file):
    keys: list = []
    magic = _RestrictedUnpickler(file, keys).load()
    if magic != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch file (wrong magic number)")
    _RestrictedUnpickler(file, keys).load()  # protocol version
    _RestrictedUnpickler(file, keys).load()  # system info
    specs = _RestrictedUnpickler(file, keys).load()
    order = _RestrictedUnpickler(file, []).load()
    types = {key: (kind, numel) for key, kind, numel in keys}
    storages = {}
    for key in order:
        kind, _ = types[key]
        dtype = np.dtype(_STORAGE_DTYPES[kind])
        numel = int(np.frombuffer(_read_exactly(file, 8), "<i8")[0])
        storages[key] = np.frombuffer(_read_exactly(file, numel * dtype.itemsize),
                                      dtype.newbyteorder("<"))
    return specs, storages


def _read_zip(path):
    keys: list = []
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError("the zip holds no single data.pkl")
        prefix = pickles[0][:-len("data.pkl")]
        specs = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), keys).load()
        storages = {}
        for key, kind, numel in keys:
            dtype = np.dtype(_STORAGE_DTYPES[kind]).newbyteorder("<")
            raw = archive.read(f"{prefix}data/{key}")
            if len(raw) < numel * dtype.itemsize:
                raise ValueError(f"storage {key} is truncated")
            storages[key] = np.frombuffer(raw, dtype, count=numel)
    return specs, storages


def _read_exactly(file, n: int) -> bytes:
    data = file.read(n)
    if len(data) != n:
        raise EOFError("the file ends early")
    return data
