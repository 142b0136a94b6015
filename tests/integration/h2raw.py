"""
A raw HTTP/2 client for the integration tests: frames (hyperframe) and
header blocks (hpack) written as given over a real socket, plaintext
(prior-knowledge h2c) or TLS with ALPN C{h2}, so that a test can send what
a well-behaved client library would refuse to (malformed fields, floods,
resets, GOAWAY at any moment) and see every frame the server answers.

Every wait is bounded: L{RawH2.until} reads frames until a condition
holds, the connection closes, or its deadline passes (then it fails).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The largest frame payload both sides accept without a SETTINGS change.
MAX_FRAME = 16384

Field = Tuple[bytes, bytes]


class Stream:
    """
    What the server sent on one stream.

    @ivar heads: Each header block's fields, in order (informational
        responses, the response, trailers).
    @ivar reset: The error code of the server's RST_STREAM, if it sent one.
    """

    def __init__(self) -> None:
        self.heads: List[List[Field]] = []
        self.data = b""
        self.ended = False
        self.reset: Optional[int] = None

    @property
    def status(self) -> Optional[int]:
        for head in self.heads:
            for name, value in head:
                if name == b":status" and not value.startswith(b"1"):
                    return int(value)
        return None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def header(self, name: bytes) -> List[bytes]:
        return [v for head in self.heads for n, v in head if n == name]

    def __repr__(self) -> str:
        return f"<Stream heads={self.heads!r} data={self.data[:200]!r} ended={self.ended} reset={self.reset}>"


class RawH2:
    """
    One HTTP/2 connection to 127.0.0.1:port.  The client preface and an
    empty SETTINGS are sent at once; the server's SETTINGS and PINGs are
    acknowledged and its DATA given back to the windows as they are read.

    @ivar goAways: Each GOAWAY received, as C{(last_stream_id, error_code)}.
    @ivar closed: Whether the server has closed the connection.
    """

    def __init__(
        self,
        port: int,
        context: Optional[ssl.SSLContext] = None,
        timeout: float = 10.0,
        authority: Optional[bytes] = None,
    ) -> None:
        self.timeout = timeout
        self.authority = authority or b"127.0.0.1:%d" % port
        self.scheme = b"https" if context is not None else b"http"
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if context is not None:
            sock = context.wrap_socket(sock)
            protocol = sock.selected_alpn_protocol()
            if protocol != "h2":
                sock.close()
                raise AssertionError(f"ALPN chose {protocol!r}, not h2")
        self.sock = sock
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.streams: Dict[int, Stream] = {}
        self.goAways: List[Tuple[int, int]] = []
        self.pingAcks: List[bytes] = []
        self.pings: List[bytes] = []
        self.frames: List[Frame] = []
        self.closed = False
        self.nextStream = 1
        self._buffer = b""
        self._block: Optional[Tuple[int, bytes, bool]] = None
        self.sendRaw(PREFACE + SettingsFrame(0).serialize())

    # -- sending -------------------------------------------------------

    def sendRaw(self, data: bytes) -> bool:
        """
        Write bytes; whether they could be written (the server may have
        closed the connection already).
        """
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def send(self, *frames: Frame) -> bool:
        return self.sendRaw(b"".join(f.serialize() for f in frames))

    def newStream(self) -> int:
        streamId = self.nextStream
        self.nextStream += 2
        self.streams[streamId] = Stream()
        return streamId

    def headerFrames(self, streamId: int, fields: Sequence[Field], end: bool = True) -> List[Frame]:
        """
        A header block as a HEADERS frame and as many CONTINUATION frames
        as it needs; the fields are encoded as given, valid or not.
        """
        block = self.encoder.encode(list(fields), huffman=False)
        pieces = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
        frames: List[Frame] = []
        for i, piece in enumerate(pieces):
            frame: Frame
            if i == 0:
                frame = HeadersFrame(streamId, piece)
                if end:
                    frame.flags.add("END_STREAM")
            else:
                frame = ContinuationFrame(streamId, piece)
            if i == len(pieces) - 1:
                frame.flags.add("END_HEADERS")
            frames.append(frame)
        return frames

    def requestFields(
        self,
        path: bytes,
        method: bytes = b"GET",
        extra: Iterable[Field] = (),
    ) -> List[Field]:
        return [
            (b":method", method),
            (b":scheme", self.scheme),
            (b":authority", self.authority),
            (b":path", path),
        ] + list(extra)

    def request(
        self,
        path: bytes,
        method: bytes = b"GET",
        extra: Iterable[Field] = (),
        body: Optional[bytes] = None,
        fields: Optional[Sequence[Field]] = None,
    ) -> int:
        """
        Open a stream and send a request on it (C{fields} instead of the
        usual ones, if given); its stream id.
        """
        streamId = self.newStream()
        if fields is None:
            fields = self.requestFields(path, method, extra)
        frames = self.headerFrames(streamId, fields, end=body is None)
        if body is not None:
            for i in range(0, len(body), MAX_FRAME):
                frames.append(DataFrame(streamId, body[i : i + MAX_FRAME]))
            last = DataFrame(streamId, b"")
            last.flags.add("END_STREAM")
            frames.append(last)
        self.send(*frames)
        return streamId

    def reset(self, streamId: int, code: int = 8) -> None:
        """
        RST_STREAM, by default with C{CANCEL}.
        """
        self.send(RstStreamFrame(streamId, error_code=code))

    def goAway(self, lastStream: int = 0, code: int = 0) -> None:
        self.send(GoAwayFrame(0, last_stream_id=lastStream, error_code=code))

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        self.send(PingFrame(0, opaque_data=opaque))

    # -- receiving -----------------------------------------------------

    def until(self, condition: Callable[[], bool], timeout: Optional[float] = None, what: str = "") -> None:
        """
        Read and handle frames until C{condition()} holds; fail if the
        connection closes first or C{timeout} seconds pass.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not condition():
            if self.closed:
                raise AssertionError(f"connection closed before {what or condition}: {self!r}")
            self._readSome(deadline, what)

    def untilClosed(self, timeout: Optional[float] = None) -> None:
        """
        Read and handle frames until the server closes the connection.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.closed:
            self._readSome(deadline, "the connection closed")

    def response(self, streamId: int, timeout: Optional[float] = None) -> Stream:
        """
        Read until the stream ends or is reset; what it carried.
        """
        stream = self.streams[streamId]
        self.until(lambda: stream.done, timeout, f"stream {streamId} done")
        return stream

    def _readSome(self, deadline: float, what: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"not within the deadline: {what}: {self!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise AssertionError(f"not within the deadline: {what}: {self!r}") from None
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return
        self._buffer += data
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
            self._buffer = self._buffer[9 + length :]
            self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                ack = SettingsFrame(0)
                ack.flags.add("ACK")
                self.send(ack)
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.pingAcks.append(frame.opaque_data)
            else:
                self.pings.append(frame.opaque_data)
                pong = PingFrame(0, opaque_data=frame.opaque_data)
                pong.flags.add("ACK")
                self.send(pong)
        elif isinstance(frame, GoAwayFrame):
            self.goAways.append((frame.last_stream_id, frame.error_code))
        elif isinstance(frame, HeadersFrame):
            self._block = (frame.stream_id, frame.data, "END_STREAM" in frame.flags)
            if "END_HEADERS" in frame.flags:
                self._endBlock()
        elif isinstance(frame, ContinuationFrame):
            assert self._block is not None and self._block[0] == frame.stream_id, frame
            streamId, block, ended = self._block
            self._block = (streamId, block + frame.data, ended)
            if "END_HEADERS" in frame.flags:
                self._endBlock()
        elif isinstance(frame, DataFrame):
            stream = self.streams.setdefault(frame.stream_id, Stream())
            stream.data += frame.data
            if "END_STREAM" in frame.flags:
                stream.ended = True
            size = frame.flow_controlled_length
            if size:
                self.send(WindowUpdateFrame(0, window_increment=size))
                if not stream.done:
                    self.send(WindowUpdateFrame(frame.stream_id, window_increment=size))
        elif isinstance(frame, RstStreamFrame):
            self.streams.setdefault(frame.stream_id, Stream()).reset = frame.error_code

    def _endBlock(self) -> None:
        assert self._block is not None
        streamId, block, ended = self._block
        self._block = None
        fields = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(block, raw=True)]
        stream = self.streams.setdefault(streamId, Stream())
        stream.heads.append(fields)
        if ended:
            stream.ended = True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawH2":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RawH2 closed={self.closed} goAways={self.goAways} streams={self.streams!r}>"


def sentHeaderBlocks(data: bytes) -> List[List[Field]]:
    """
    The header blocks (requests and trailers, pseudo-header fields
    included) in the bytes a client sent on one HTTP/2 connection, in order,
    decoded as the server decoded them; an incomplete frame at the end is
    left out.
    """
    if not data.startswith(PREFACE):
        raise ValueError("not an HTTP/2 client's bytes")
    decoder = Decoder()
    decoder.max_header_list_size = 1 << 20
    blocks: List[List[Field]] = []
    block = b""
    pos = len(PREFACE)
    while len(data) - pos >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        if len(data) - pos - 9 < length:
            break
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            block += frame.data
            if "END_HEADERS" in frame.flags:
                blocks.append([(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)])
                block = b""
    return blocks
