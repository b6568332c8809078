"""Upstream answers arrive as sent (the gateway's HTTP session does not decompress, so that a
pass-through relays bytes untouched). The gateway asks for `Accept-Encoding: identity`; an
upstream (or a proxy in front of one) that compresses anyway is decoded here, as the bytes arrive,
so its answer is billed and relayed like any other instead of failing as unparsable."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from openbili.core.errors import UpstreamError

# A compressed answer may not inflate beyond this: a gzip bomb must not take the process down.
MAX_DECODED_BYTES = 256 * 1024 * 1024

# wbits: 16 + 15 = a gzip member, 15 = a zlib stream (RFC 9110 "deflate"), -15 = raw deflate (what
# some servers send as "deflate" anyway).
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


class Decoder:
    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.size = 0
        self._inflate = zlib.decompressobj(_WBITS[coding])
        self._raw_deflate_tried = coding != "deflate"

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._inflate.decompress(data, MAX_DECODED_BYTES - self.size + 1)
        except zlib.error:
            if self._raw_deflate_tried or self.size:
                raise UpstreamError(f"The upstream's {self.coding} answer is corrupt.") from None
            self._raw_deflate_tried = True
            self._inflate = zlib.decompressobj(-15)
            return self.feed(data)
        self.size += len(out)
        if self.size > MAX_DECODED_BYTES or self._inflate.unconsumed_tail:
            raise UpstreamError("The upstream's compressed answer is too large.")
        return out

    def decode(self, data: bytes) -> bytes:
        """A whole body."""
        return self.feed(data) + self._inflate.flush()


def decoder_for(headers: Mapping[str, str]) -> Decoder | None:
    """None for an uncompressed answer (the usual case: nothing to do)."""
    coding = headers.get("Content-Encoding")
    if not coding:
        return None
    coding = coding.strip().lower()
    if coding == "identity":
        return None
    if coding not in _WBITS:
        raise UpstreamError(f"The upstream answered with an unsupported Content-Encoding '{coding[:40]}'.")
    return Decoder(coding)
