"""Streaming decoder for a FHIR ``Binary`` resource in JSON.

A portal may answer a photo download with ``{"resourceType": "Binary",
"contentType": "image/jpeg", "data": "<base64>"}`` instead of the raw bytes.
:func:`binary_json_chunks` turns the response's text chunks into the decoded
bytes of ``data`` while reading, so memory stays flat whatever the photo size:
only the small fields around ``data`` are kept. It raises
:class:`~derm_workstation.portal.errors.PortalDataError` for malformed JSON, a
resource that is not a Binary, or one without data — at the end of the stream,
so a caller streaming into the image store stores nothing in that case.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterable, Iterator

from derm_workstation.portal.errors import PortalDataError

_SPECIAL = re.compile(r'["\\]')
_WS = " \t\r\n"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t"}
_MAX_DEPTH = 64
_MAX_SMALL_STRING = 64 * 1024


def _bad(what: str) -> PortalDataError:
    return PortalDataError(f"The portal sent a malformed Binary resource ({what}).")


class _Reader:
    """Characters from an iterator of text chunks, with one-chunk lookahead."""

    def __init__(self, chunks: Iterator[str]) -> None:
        self._chunks = chunks
        self.buf = ""
        self.pos = 0

    def _fill(self) -> bool:
        while self.pos >= len(self.buf):
            nxt = next(self._chunks, None)
            if nxt is None:
                return False
            self.buf, self.pos = nxt, 0
        return True

    def peek(self) -> str:
        if not self._fill():
            return ""
        return self.buf[self.pos]

    def take(self) -> str:
        if not self._fill():
            raise _bad("it ends too early")
        ch = self.buf[self.pos]
        self.pos += 1
        return ch

    def skip_ws(self) -> None:
        while self._fill():
            buf, pos = self.buf, self.pos
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < len(buf):
                return

    def expect(self, ch: str) -> None:
        self.skip_ws()
        got = self.take()
        if got != ch:
            raise _bad(f"expected '{ch}'")

    def string_segments(self) -> Iterator[str]:
        """The decoded pieces of a JSON string; the opening quote is already taken."""
        while True:
            if not self._fill():
                raise _bad("a string is not closed")
            m = _SPECIAL.search(self.buf, self.pos)
            if m is None:
                seg = self.buf[self.pos:]
                self.pos = len(self.buf)
                if seg:
                    yield seg
                continue
            seg = self.buf[self.pos:m.start()]
            self.pos = m.end()
            if seg:
                yield seg
            if m.group() == '"':
                return
            esc = self.take()
            if esc in _ESCAPES:
                yield _ESCAPES[esc]
            elif esc == "u":
                digits = "".join(self.take() for _ in range(4))
                try:
                    yield chr(int(digits, 16))
                except ValueError as exc:
                    raise _bad("a bad \\u escape") from exc
            else:
                raise _bad("a bad escape")

    def small_string(self) -> str:
        out: list[str] = []
        size = 0
        for seg in self.string_segments():
            size += len(seg)
            if size > _MAX_SMALL_STRING:
                raise _bad("an unexpectedly long field")
            out.append(seg)
        return "".join(out)

    def skip_value(self, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise _bad("nested too deeply")
        self.skip_ws()
        ch = self.take()
        if ch == '"':
            for _ in self.string_segments():
                pass
        elif ch == "{":
            self.skip_ws()
            if self.peek() == "}":
                self.take()
                return
            while True:
                self.expect('"')
                for _ in self.string_segments():
                    pass
                self.expect(":")
                self.skip_value(depth + 1)
                self.skip_ws()
                sep = self.take()
                if sep == "}":
                    return
                if sep != ",":
                    raise _bad("expected ',' or '}'")
        elif ch == "[":
            self.skip_ws()
            if self.peek() == "]":
                self.take()
                return
            while True:
                self.skip_value(depth + 1)
                self.skip_ws()
                sep = self.take()
                if sep == "]":
                    return
                if sep != ",":
                    raise _bad("expected ',' or ']'")
        elif ch in "-0123456789tfn":
            literal = [ch]
            while True:
                nxt = self.peek()
                if nxt and nxt in "+-.eE0123456789truefalsn":
                    literal.append(self.take())
                else:
                    break
            word = "".join(literal)
            if word not in ("true", "false", "null"):
                try:
                    float(word)
                except ValueError as exc:
                    raise _bad("a bad literal") from exc
        else:
            raise _bad("an unexpected character")


class _Base64Stream:
    """Decodes base64 text arriving in pieces (whitespace ignored)."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> bytes:
        if any(c in text for c in _WS):
            text = "".join(text.split())
        text = self._pending + text
        usable = len(text) - len(text) % 4
        self._pending = text[usable:]
        if not usable:
            return b""
        try:
            return base64.b64decode(text[:usable], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad("its data is not valid base64") from exc

    def finish(self) -> bytes:
        if self._pending:
            raise _bad("its base64 data is cut short")
        return b""


def binary_json_chunks(raw_chunks: Iterable[bytes], encoding: str = "utf-8") -> Iterator[bytes]:
    """Decoded bytes of a Binary resource's ``data``, streamed from its JSON text."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")

    def texts() -> Iterator[str]:
        try:
            for chunk in raw_chunks:
                text = decoder.decode(chunk)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise _bad("it is not valid UTF-8 text") from exc
        if tail:
            yield tail

    r = _Reader(texts())
    r.skip_ws()
    if r.peek() == "\ufeff":
        r.take()
    r.expect("{")
    resource_type: str | None = None
    found = False
    r.skip_ws()
    if r.peek() == "}":
        r.take()
    else:
        while True:
            r.expect('"')
            key = r.small_string()
            r.expect(":")
            r.skip_ws()
            if key == "data" and r.peek() == '"':
                if found:
                    raise _bad("data appears twice")
                r.take()
                b64 = _Base64Stream()
                for seg in r.string_segments():
                    out = b64.feed(seg)
                    if out:
                        yield out
                b64.finish()
                found = True
            elif key == "resourceType" and r.peek() == '"':
                r.take()
                resource_type = r.small_string()
            else:
                r.skip_value()
            r.skip_ws()
            sep = r.take()
            if sep == "}":
                break
            if sep != ",":
                raise _bad("expected ',' or '}'")
    r.skip_ws()
    if r.peek():
        raise _bad("there is text after the resource")
    if resource_type != "Binary":
        raise PortalDataError(
            f"The portal answered a photo download with a {resource_type or 'non-FHIR'} "
            "resource instead of the photo."
        )
    if not found:
        raise PortalDataError("The portal sent a Binary resource without data.")


__all__ = ["binary_json_chunks"]
