"""A ctypes binding of libhcemu (csrc/hcemu_chip.h) for the tests: the C chip driven without the extension."""
from __future__ import annotations

import ctypes

import numpy as np

import hcemu


class CError(RuntimeError):
    def __init__(self, rc: int, msg: str):
        super().__init__(f"status {rc}: {msg}")
        self.rc = rc


class ImageInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                                              "vocab_size", "max_context", "n_regions", "n_fields")] + [
        ("kv_int8", ctypes.c_int), ("features", ctypes.c_uint)]


def load():
    lib = ctypes.CDLL(hcemu.get_library())
    P, i64, f32p = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_float)
    lib.hc_last_error.restype = ctypes.c_char_p
    lib.hc_event_field_name.restype = ctypes.c_char_p
    lib.hc_image_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(P)]
    lib.hc_image_get_info.argtypes = [P, ctypes.POINTER(ImageInfo)]
    lib.hc_image_close.argtypes = [P]
    lib.hc_chip_create.argtypes = [P, i64, ctypes.c_int, ctypes.POINTER(P)]
    lib.hc_chip_destroy.argtypes = [P]
    lib.hc_chip_prefill.argtypes = [P, ctypes.POINTER(ctypes.c_int32), i64, f32p]
    lib.hc_chip_decode.argtypes = [P, ctypes.c_int32, f32p]
    lib.hc_chip_reset.argtypes = [P]
    lib.hc_chip_position.argtypes = [P]
    lib.hc_chip_position.restype = i64
    lib.hc_chip_events.argtypes = [P, ctypes.POINTER(ctypes.c_int64), i64]
    return lib


class CChip:
    """One image and one chip of libhcemu."""

    def __init__(self, lib, path, kv_capacity: int, n_threads: int = 1):
        self.lib = lib
        self.img, self.chip = ctypes.c_void_p(), ctypes.c_void_p()
        self._ok(lib.hc_image_open(str(path).encode(), ctypes.byref(self.img)))
        self.info = ImageInfo()
        try:
            self._ok(lib.hc_image_get_info(self.img, ctypes.byref(self.info)))
            self._ok(lib.hc_chip_create(self.img, kv_capacity, n_threads, ctypes.byref(self.chip)))
        except CError:
            lib.hc_image_close(self.img)
            raise

    def _ok(self, rc):
        if rc:
            raise CError(rc, self.lib.hc_last_error().decode())

    def close(self):
        self.lib.hc_chip_destroy(self.chip)
        self.lib.hc_image_close(self.img)

    def _logits(self):
        return np.empty(self.info.vocab_size, np.float32)

    def prefill(self, ids):
        ids = np.ascontiguousarray(ids, np.int32)
        out = self._logits()
        self._ok(self.lib.hc_chip_prefill(self.chip, ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), len(ids),
                                          out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        return out

    def decode(self, tok: int):
        out = self._logits()
        self._ok(self.lib.hc_chip_decode(self.chip, int(tok), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        return out

    def reset(self):
        self._ok(self.lib.hc_chip_reset(self.chip))

    @property
    def position(self) -> int:
        return self.lib.hc_chip_position(self.chip)

    def events(self) -> np.ndarray:
        out = np.empty((self.info.n_regions, self.info.n_fields), np.int64)
        self._ok(self.lib.hc_chip_events(self.chip, out.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), out.size))
        return out
