"""Where an HTTP/1.1 request ends in a buffer, before anything parses it in full.

The worker (omni_mev.workers) reads a connection's bytes without blocking and
hands a request to the application only once all of it, head and body, has
arrived. These functions answer "is it all here yet?" on the raw bytes; the
head's full parse, with every rule of RFC 9112, stays gunicorn's. A chunked
body is decoded here, once, as its end is found (ChunkedBody.content); one
whose framing is broken is refused (MalformedBody): where it ends cannot be
known, so the worker answers once and closes the connection rather than read
the rest of the body as another request.
"""
from __future__ import annotations

HEAD_END = b"\r\n\r\n"
CRLF = b"\r\n"
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# What a chunk extension may hold (RFC 9112: tokens, quoted strings, whitespace): visible ASCII, space and tab.
EXTENSION_BYTES = frozenset(range(0x20, 0x7F)) | {0x09}
# A chunk-size line (size and extensions) longer than this is refused rather than waited for.
MAX_SIZE_LINE = 4096


class BodyTooLarge(Exception):
    """A chunked body grew past the limit before it ended."""


class MalformedBody(Exception):
    """A chunked body whose framing is broken (a size that is not hexadecimal, chunk data not followed by CRLF):
    where it ends cannot be known, so nothing after it on the connection can be read as a request."""


def head_length(buffer: bytes | bytearray) -> int | None:
    """Bytes of the request head (line, fields and the blank line), or None while it is incomplete."""
    end = buffer.find(HEAD_END)
    return None if end < 0 else end + len(HEAD_END)


class ChunkedBody:
    """Where a chunked body that begins at `start` ends, found as its bytes arrive, and its data.

    The scan resumes where it stopped, so a body sent in many small pieces is
    read once, not once per piece.
    """

    def __init__(self, start: int, limit: int) -> None:
        self.position = start  # the start of the next chunk-size line
        self.data = 0  # chunk data bytes so far
        self.limit = limit
        self.pieces: list[tuple[int, int]] = []  # where each chunk's data lies in the buffer

    def content(self, buffer: bytes | bytearray) -> bytes:
        """The body's data, its chunks joined, once end() has found the end (offsets are the buffer's)."""
        return b"".join(bytes(buffer[start:stop]) for start, stop in self.pieces)

    def end(self, buffer: bytes | bytearray) -> int | None:
        """The offset just past the body, or None while it is incomplete.

        Raises BodyTooLarge once the chunk data exceeds the limit, and
        MalformedBody for a size line that is not hexadecimal or chunk data not
        followed by CRLF.
        """
        while True:
            line_end = buffer.find(CRLF, self.position)
            if line_end < 0:
                if len(buffer) - self.position > MAX_SIZE_LINE:
                    raise MalformedBody(f"a chunk-size line is over {MAX_SIZE_LINE} bytes")
                return None
            size_text, _, extensions = bytes(buffer[self.position:line_end]).partition(b";")
            size_text = size_text.strip()
            if not size_text or not all(c in HEX_DIGITS for c in size_text):
                shown = bytes(buffer[self.position:line_end][:20])
                raise MalformedBody(f"the chunk size {shown!r} is not hexadecimal")
            if not EXTENSION_BYTES.issuperset(extensions):
                raise MalformedBody(f"the chunk extension {extensions[:20]!r} holds a control character")
            size = int(size_text, 16)
            if size == 0:
                # The last chunk, then trailer fields (usually none) and a blank line.
                if buffer[line_end + 2:line_end + 4] == CRLF:
                    return line_end + 4
                trailers_end = buffer.find(HEAD_END, line_end + 2)
                return None if trailers_end < 0 else trailers_end + len(HEAD_END)
            if self.data + size > self.limit:
                raise BodyTooLarge(f"the chunked body is over {self.limit} bytes")
            following = line_end + len(CRLF) + size + len(CRLF)
            if len(buffer) < following:
                return None
            if buffer[following - len(CRLF):following] != CRLF:
                raise MalformedBody(f"a chunk of {size} bytes is not followed by CRLF")
            self.pieces.append((line_end + len(CRLF), following - len(CRLF)))
            self.data += size
            self.position = following
