"""Just enough HTTP/1.1 for the API: one request per connection, parsed from
a bounded buffer, and a response with a JSON body and `Connection: close`.

parse_request(buffer) returns None while the request is incomplete, a
Request once it is, and raises HttpError (the status to answer with) for
anything it will not take: a head over MAX_HEAD bytes (431), a body over
MAX_BODY (413), a malformed request line or header (400), a version other
than 1.0/1.1 (505), a Transfer-Encoding (501: bodies have a Content-Length).
"""

import json
import re

MAX_HEAD = 8 << 10
MAX_BODY = 16 << 10
MAX_HEADERS = 64
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TARGET = re.compile(rb"^/[\x21-\x7e]*$")
_VERSION = re.compile(rb"^HTTP/(\d)\.(\d)$")


class HttpError(Exception):
    def __init__(self, status, reason, headers=()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)


class Request:
    def __init__(self, method, target, headers, body):
        self.method = method
        self.target = target
        self.headers = headers        # lower-case name -> value (str)
        self.body = body              # bytes

    @property
    def path(self):
        return self.target.split("?", 1)[0]


def parse_request(buffer):
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise HttpError(431, f"the request head is longer than {MAX_HEAD} bytes")
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _TARGET.match(parts[1]):
        raise HttpError(400, "malformed request line")
    version = _VERSION.match(parts[2])
    if not version:
        raise HttpError(400, "malformed HTTP version")
    if (version.group(1), version.group(2)) not in ((b"1", b"1"), (b"1", b"0")):
        raise HttpError(505, "only HTTP/1.1 (and 1.0) are spoken here")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise HttpError(400, "malformed header field")
        key = name.decode("ascii").lower()
        if key in headers and key in ("content-length", "host", "content-type"):
            raise HttpError(400, f"{key} given twice")
        try:
            headers[key] = value.strip(b" \t").decode("latin-1")
        except UnicodeDecodeError:      # latin-1 decodes any byte; kept for clarity
            raise HttpError(400, "malformed header value") from None
    if "transfer-encoding" in headers:
        raise HttpError(501, "Transfer-Encoding is not supported: send a Content-Length")
    length = headers.get("content-length", "0")
    if not length.isdigit() or len(length) > 12:
        raise HttpError(400, "malformed Content-Length")
    length = int(length)
    if length > MAX_BODY:
        raise HttpError(413, f"the body is longer than {MAX_BODY} bytes")
    start = end + 4
    if len(buffer) < start + length:
        return None
    return Request(parts[0].decode("ascii"), parts[1].decode("ascii"), headers, bytes(buffer[start:start + length]))


def json_body(request):
    """The request's JSON body (None when empty); HttpError 400/415 otherwise."""
    if not request.body:
        return None
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HttpError(415, f"the body must be application/json, not {kind}")
    try:
        return json.loads(request.body)
    except (ValueError, RecursionError):
        raise HttpError(400, "the body is not valid JSON") from None


def response(status, payload=None, headers=()):
    """The bytes of a response; `payload` (JSON-able) becomes its body."""
    body = b"" if payload is None else json.dumps(payload).encode() + b"\n"
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", "Connection: close",
             f"Content-Length: {len(body)}"]
    if body:
        lines.append("Content-Type: application/json")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def error_response(status, reason, headers=()):
    return response(status, {"error": reason}, headers)


class Response:
    """A parsed response (for the client): status, headers, body bytes."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body


def parse_response(data):
    """A complete response read until the server closed; ValueError if malformed."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise ValueError("the answer has no complete head")
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError("the answer has a malformed status line")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    body = data[end + 4:]
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or len(body) < int(length)):
        raise ValueError("the answer's body is cut short")
    return Response(int(parts[1]), headers, body[:int(length)] if length is not None else body)
