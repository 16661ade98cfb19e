"""Counter-based random numbers: a draw is a pure function of its key, on every machine.

A key is a tuple of ints and strings; blake2b turns (key, counter) into 512 random bits.
No global state and no replay: the n-th number of a stream costs one hash.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from decimal import Decimal

_U64 = struct.Struct("<8Q")


def key_bytes(*parts: int | str) -> bytes:
    """Encode a key unambiguously (type tag and length for every part)."""
    out = []
    for part in parts:
        if isinstance(part, int):
            out.append(b"i" + part.to_bytes(16, "little", signed=True))
        else:
            enc = part.encode()
            out.append(b"s" + len(enc).to_bytes(4, "little") + enc)
    return b"".join(out)


def words(key: bytes, counter: int) -> tuple[int, ...]:
    """Eight 64-bit unsigned words for (key, counter)."""
    digest = hashlib.blake2b(
        key + counter.to_bytes(9, "little", signed=True), digest_size=64
    ).digest()
    return _U64.unpack(digest)


def open_unit(word: int) -> float:
    """A 64-bit word as a float strictly inside (0, 1); only exact operations are used."""
    return ((word >> 11) + 0.5) / 9007199254740992.0


class Stream:
    """A reproducible stream of draws for one key (e.g. one user's run at one slot)."""

    __slots__ = ("_buf", "_counter", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0
        self._buf: Iterator[int] = iter(())

    def word(self) -> int:
        """The next 64-bit word."""
        for w in self._buf:
            return w
        self._buf = iter(words(self._key, self._counter))
        self._counter += 1
        return next(self._buf)

    def below(self, n: int) -> int:
        """A uniform integer in [0, n) (n ≤ 2**32; the modulo bias is below 2**-32)."""
        return self.word() % n

    def fraction(self, digits: int = 6) -> Decimal:
        """A uniform Decimal in (0, 1] with the given number of digits, built from integers only."""
        scale = 10**digits
        return Decimal(self.word() % scale + 1).scaleb(-digits)
