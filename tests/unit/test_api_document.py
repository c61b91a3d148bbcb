"""The API's HTTP parser and its OpenAPI document, without KVM: any bytes a
client sends give a request, "not yet", or an HttpError with a 4xx/5xx
status, never another exception; well-formed requests parse to what was
sent; the document is complete and the client's commands are its operations."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.api.document import PATH, SchemaError, document
from pyvmm.api.http import MAX_BODY, MAX_HEAD, HttpError, parse_request, parse_response, response

COMMANDS = {"ping", "info", "counters", "pause", "resume", "snapshot", "shutdown", "power-button"}


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=2 * MAX_HEAD))
def test_any_bytes_give_a_request_or_a_4xx_5xx(data):
    try:
        parse_request(bytearray(data))
    except HttpError as error:
        assert 400 <= error.status < 600 and error.reason


token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(["GET", "PUT", "POST", "DELETE"]), path=st.text("abc./-_", max_size=30),
       headers=st.dictionaries(token.filter(lambda name: name not in ("content-length", "transfer-encoding")),
                               st.text("abc 123;=/", max_size=20).map(str.strip), max_size=6),
       body=st.binary(max_size=300), cut=st.integers(0, 400))
def test_a_well_formed_request_parses_to_what_was_sent(method, path, headers, body, cut):
    head = [f"{method} /{path} HTTP/1.1"] + [f"{name}: {value}" for name, value in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    request = parse_request(bytearray(raw))
    assert (request.method, request.target, request.body) == (method, f"/{path}", body)
    assert {name: request.headers[name] for name in headers} == headers
    if cut < len(raw):
        assert parse_request(bytearray(raw[:cut])) is None      # incomplete: wait for more


@pytest.mark.parametrize("raw, status", [
    (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"A" * (MAX_HEAD + 10), 431),
    (b"PUT / HTTP/1.1\r\nContent-Length: " + str(MAX_BODY + 1).encode() + b"\r\n\r\n", 413),
    (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
    (b"GET /\x00 HTTP/1.1\r\n\r\n", 400),
])
def test_what_is_refused_and_how(raw, status):
    with pytest.raises(HttpError) as error:
        parse_request(bytearray(raw))
    assert error.value.status == status


def test_the_document_is_complete_and_names_the_clients_commands():
    api = document()
    assert set(api.by_command) == COMMANDS
    for operation in api.operations:
        assert operation.path.startswith("/api/v1/")
        assert operation.responses and all(100 <= status < 600 for status in operation.responses)
        for schema in operation.responses.values():
            if schema is not None:
                api.resolve(schema)                 # every reference resolves
    assert [argument[1] for argument in api.by_command["snapshot"].arguments()] == ["DIR"]
    assert json.load(open(PATH))["openapi"].startswith("3.")


def test_bodies_are_checked_against_the_document():
    snapshot = document().by_command["snapshot"]
    snapshot.check_request({"destination_url": "file:///tmp/x"})
    for bad in (None, {}, {"destination_url": "http://x/"}, {"destination_url": 3},
                {"destination_url": "file:///x", "extra": 1}, []):
        with pytest.raises(SchemaError):
            snapshot.check_request(bad)
    with pytest.raises(SchemaError, match="takes no body"):
        document().by_command["pause"].check_request({})
    with pytest.raises(SchemaError, match="status 418"):
        document().by_command["pause"].check_response(418, None)


def test_responses_parse_back():
    answer = parse_response(response(200, {"version": "1", "pid": 7}))
    assert answer.status == 200 and json.loads(answer.body) == {"version": "1", "pid": 7}
    assert answer.headers["connection"] == "close"
    assert parse_response(response(204)).body == b""
