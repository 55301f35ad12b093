"""Choices drawn from fuzz input bytes, and byte-level mutations.

Every target takes one ``bytes`` input, so one input reproduces one case exactly whichever engine made
it: atheris (coverage-guided, libFuzzer's mutations) or the seeded random engine of :mod:`fuzz.run`.
"""
from __future__ import annotations

import struct

INTERESTING_INTS = (0, 1, -1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256,
                    4095, 4096, 4097, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**53, 2**62, 2**63 - 1, 2**63,
                    2**64, -2**31, -2**63, 10**12, 10**18, 10**30)
INTERESTING_FLOATS = (0.0, -0.0, 0.5, 1.0, -1.0, 1.5, 1e-45, 1e-30, 1e-5, 65504.0, 65520.0, 3.5e38, 1e300,
                      float("nan"), float("inf"), float("-inf"))


class Draw:
    """Deterministic choices from ``data``: each draw consumes a few bytes; past the end every draw
    returns its smallest value, so short inputs make simple cases."""

    def __init__(self, data: bytes):
        self.data = bytes(data)
        self.pos = 0

    def _take(self, n: int) -> int:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return int.from_bytes(chunk.ljust(n, b"\0"), "little")

    def int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        span = hi - lo + 1
        if span <= 1:
            return lo
        return lo + self._take((span.bit_length() + 7) // 8) % span

    def bool(self) -> bool:
        return bool(self._take(1) & 1)

    def chance(self, one_in: int) -> bool:
        return self.int(0, one_in - 1) == 0

    def choice(self, seq):
        return seq[self.int(0, len(seq) - 1)]

    def interesting_int(self) -> int:
        if self.chance(4):
            return self.int(-300, 300)
        return self.choice(INTERESTING_INTS)

    def float(self) -> float:
        if self.chance(3):
            return struct.unpack("<d", struct.pack("<Q", self._take(8)))[0]
        return self.choice(INTERESTING_FLOATS)

    def bytes(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out.ljust(n, b"\0")

    def text(self, max_len: int = 16) -> str:
        raw = self.bytes(self.int(0, max_len))
        return raw.decode("utf-8", errors="replace")


def mutate_bytes(seed: bytes, draw: Draw, max_ops: int = 8) -> bytes:
    """Classic byte mutations of ``seed``: bit flips, byte and word overwrites with interesting
    values, insertions, deletions, truncation and extension; 1..max_ops of them."""
    b = bytearray(seed)
    for _ in range(draw.int(1, max_ops)):
        op = draw.int(0, 7)
        n = len(b)
        if op == 0 and n:
            i = draw.int(0, n - 1)
            b[i] ^= 1 << draw.int(0, 7)
        elif op == 1 and n:
            b[draw.int(0, n - 1)] = draw.int(0, 255)
        elif op == 2 and n >= 8:
            i = draw.int(0, n - 8)
            v = draw.interesting_int() % 2**64
            b[i:i + 8] = v.to_bytes(8, "little")
        elif op == 3 and n >= 4:
            i = draw.int(0, n - 4)
            v = draw.interesting_int() % 2**32
            b[i:i + 4] = v.to_bytes(4, "little")
        elif op == 4:
            i = draw.int(0, n)
            b[i:i] = draw.bytes(draw.int(1, 16))
        elif op == 5 and n:
            i = draw.int(0, n - 1)
            del b[i:i + draw.int(1, 64)]
        elif op == 6 and n:
            del b[draw.int(0, n - 1):]
        else:
            b += draw.bytes(draw.int(1, 32))
    return bytes(b)
