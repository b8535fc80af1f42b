"""The restricted .pth reader, on files written here in torch's two layouts."""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from cvsearch.torch_weights import load_state_dict


class _FakeTorch:
    """Just enough of torch's names for pickle to write what torch writes."""

    def __enter__(self):
        torch = types.ModuleType("torch")
        utils = types.ModuleType("torch._utils")

        class FloatStorage:
            pass

        class LongStorage:
            pass

        def _rebuild_tensor_v2(*args):
            raise AssertionError("never called when writing")

        for cls in (FloatStorage, LongStorage):
            cls.__module__, cls.__qualname__ = "torch", cls.__name__
            setattr(torch, cls.__name__, cls)
        _rebuild_tensor_v2.__module__ = "torch._utils"
        _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
        utils._rebuild_tensor_v2 = _rebuild_tensor_v2
        torch._utils = utils
        self.saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
        sys.modules.update({"torch": torch, "torch._utils": utils})
        return torch

    def __exit__(self, *exc):
        for key, module in self.saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module


class _Storage:
    def __init__(self, key, kind, array):
        self.key, self.kind, self.array = key, kind, array


class _Tensor:
    def __init__(self, storage, size, stride, offset=0):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def _pickler(buffer, storages):
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.persistent_id = lambda obj: (
        ("storage", obj.kind, obj.key, "cpu", obj.array.size)
        if isinstance(obj, _Storage) else None)
    return pickler


def _state(torch):
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    counts = np.array([7], np.int64)
    s0 = _Storage("0", torch.FloatStorage, weight.ravel())
    s1 = _Storage("1", torch.LongStorage, counts)
    state = collections.OrderedDict(
        [("conv.weight", _Tensor(s0, (3, 4), (4, 1))),
         ("conv.weight_t", _Tensor(s0, (4, 3), (1, 4))),  # a transposed view
         ("bn.count", _Tensor(s1, (), ()))])
    return state, [s0, s1], {"conv.weight": weight, "conv.weight_t": weight.T,
                             "bn.count": counts[0]}


def write_legacy(path, truncate=0):
    with _FakeTorch() as torch:
        state, storages, expected = _state(torch)
        buffer = io.BytesIO()
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.Pickler(buffer, protocol=2).dump(header)
        _pickler(buffer, storages).dump(state)
        pickle.Pickler(buffer, protocol=2).dump([s.key for s in storages])
        for s in storages:
            buffer.write(struct.pack("<q", s.array.size) + s.array.tobytes())
    data = buffer.getvalue()
    path.write_bytes(data[:len(data) - truncate])
    return expected


def write_zip(path):
    with _FakeTorch() as torch:
        state, storages, expected = _state(torch)
        buffer = io.BytesIO()
        _pickler(buffer, storages).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for s in storages:
            archive.writestr(f"archive/data/{s.key}", s.array.tobytes())
    return expected


@pytest.mark.parametrize("writer", [write_legacy, write_zip])
def test_reads_both_layouts(tmp_path, writer):
    path = tmp_path / "weights.pth"
    expected = writer(path)
    state = load_state_dict(path)
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert np.array_equal(state[key], value)
        assert state[key].dtype == np.asarray(value).dtype


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pth"
    write_legacy(path, truncate=9)
    with pytest.raises(ValueError, match="cut.pth"):
        load_state_dict(path)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                    zipfile.ZIP_LZMA, 99])
def test_a_member_its_stated_method_cannot_decompress_is_a_clear_error(tmp_path,
                                                                       method):
    """A stored tensor whose zip headers claim another compression (a damaged
    or forged file) is refused with the file named, whatever the decompressor
    raises."""
    path = tmp_path / "forged.pth"
    write_zip(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    name = info.filename.encode()
    local = info.header_offset  # method at +8 of the local header
    central = data.rindex(b"PK\x01\x02", 0, data.rindex(name))  # and +10 here
    for at in (local + 8, central + 10):
        data[at:at + 2] = struct.pack("<H", method)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="forged.pth"):
        load_state_dict(path)


class _Evil:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_refuses_code_in_the_pickle(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_state_dict(path)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_state_dict(legacy)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
