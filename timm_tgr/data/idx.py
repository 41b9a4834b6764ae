"""IDX files (the MNIST / Fashion-MNIST format): read, write, and a tiny synthetic Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in C order. MNIST-family images are type 0x08
(uint8) with shape [N, 28, 28], labels uint8 with shape [N]. ``.gz`` files are read transparently.
"""
import gzip
import os
import struct
import zlib
from typing import Tuple

import numpy as np

__all__ = ['read_idx', 'read_idx_shape', 'check_idx_size', 'write_idx']

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
              0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def _open(path: str):
    return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def _header(f, path: str) -> Tuple[np.dtype, Tuple[int, ...]]:
    magic = f.read(4)
    if len(magic) != 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
        raise ValueError(f'{path} is not an IDX file (magic {magic!r}): expected the MNIST / Fashion-MNIST '
                         f'format (e.g. train-images-idx3-ubyte); re-extract the dataset.')
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if len(dims) != 4 * ndim:
        raise ValueError(f'{path} is truncated: its header ends after {4 + len(dims)} bytes; re-extract the dataset.')
    shape = struct.unpack(f'>{ndim}I', dims)
    return np.dtype(_IDX_TYPES[magic[2]]), tuple(shape)


def _read_gzip_error(path: str, e: Exception) -> ValueError:
    return ValueError(f'{path} is not a readable gzip file ({type(e).__name__}: {e}): it is corrupt or truncated; '
                      f'download or extract it again.')


def read_idx_shape(path: str) -> Tuple[int, ...]:
    """The array shape stored in ``path`` (reads the header only)."""
    try:
        with _open(path) as f:
            return _header(f, path)[1]
    except (OSError, EOFError, zlib.error) as e:
        if not path.endswith('.gz') or isinstance(e, FileNotFoundError):
            raise
        raise _read_gzip_error(path, e) from e


def check_idx_size(path: str) -> Tuple[np.dtype, Tuple[int, ...]]:
    """dtype and shape of the uncompressed IDX file ``path``, checked against its size (header and file size only:
    no data is read); ValueError naming the file when it is not IDX or is truncated."""
    with open(path, 'rb') as f:
        dtype, shape = _header(f, path)
    count = int(np.prod(shape)) if shape else 1
    need = 4 + 4 * len(shape) + count * dtype.itemsize
    size = os.path.getsize(path)
    if size < need:
        raise ValueError(f'{path} is truncated: {size} bytes for shape {shape} ({dtype}, {need} bytes); '
                         f're-extract the dataset.')
    if size > need:
        raise ValueError(f'{path} has {size - need} bytes after the {need} its header announces (shape {shape}, '
                         f'{dtype}): it is not one IDX file as written; re-extract the dataset.')
    return dtype, shape


def read_idx(path: str) -> np.ndarray:
    """The array stored in ``path`` (native byte order)."""
    try:
        with _open(path) as f:
            dtype, shape = _header(f, path)
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        if not path.endswith('.gz') or isinstance(e, FileNotFoundError):
            raise
        raise _read_gzip_error(path, e) from e
    count = int(np.prod(shape)) if shape else 1
    if len(data) < count * dtype.itemsize:
        raise ValueError(f'{path} is truncated: {len(data)} bytes of data for shape {shape} ({dtype}); '
                         f're-extract the dataset.')
    if len(data) > count * dtype.itemsize:
        raise ValueError(f'{path} has {len(data) - count * dtype.itemsize} bytes after the {count * dtype.itemsize} '
                         f'its header announces (shape {shape}, {dtype}): it is not one IDX file as written; '
                         f're-extract the dataset.')
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape).astype(dtype.newbyteorder('='))


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 ``array`` as an IDX file (atomically: a temp file, then ``os.replace``)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f'write_idx writes uint8 arrays (MNIST format), got {array.dtype}: cast it first.')
    header = struct.pack('>HBB', 0, 0x08, array.ndim) + b''.join(struct.pack('>I', d) for d in array.shape)
    tmp = path + '.part'
    with open(tmp, 'wb') as f:
        f.write(header + array.tobytes())
    os.replace(tmp, path)
