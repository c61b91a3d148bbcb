"""`pyvmm remote --api-socket PATH COMMAND [ARG]`: the API's client.

Its commands are the document's operations (vm.pause is `pause`, the
request body's x-pyvmm-argument properties its arguments); it checks what it
sends and what it gets against the document. A 2xx answer with a body is
printed as JSON; an error is one `pyvmm: error:` line and exit status 1.
"""

import json
import os
import socket
import urllib.parse

from .document import SchemaError, document
from .http import parse_response

TIMEOUT = 300.0                 # a snapshot of a large guest takes a while
MAX_ANSWER = 64 << 20


class RemoteError(Exception):
    """The call failed (no server, an error answer, a malformed one); for the user."""


class UsageError(Exception):
    """The command line cannot make a valid request."""


def add_commands(parser):
    """One subcommand per operation of the document."""
    commands = parser.add_subparsers(dest="remote_command", metavar="COMMAND")
    commands.required = True
    for operation in document().operations:
        command = commands.add_parser(operation.command, help=operation.summary)
        for name, metavar, _ in operation.arguments():
            command.add_argument(name, metavar=metavar)


def body_for(operation, args):
    """The request body a command line gives (None for none), checked."""
    arguments = operation.arguments()
    if not arguments and operation.request_schema is None:
        return None
    body = {}
    for name, _metavar, file_url in arguments:
        value = getattr(args, name)
        body[name] = "file://" + urllib.parse.quote(os.path.abspath(value)) if file_url else value
    try:
        operation.check_request(body)
    except SchemaError as error:
        raise UsageError(str(error)) from None
    return body


def call(path, operation, body=None, timeout=TIMEOUT):
    """(status, payload) of one request; RemoteError if there is no answer
    or it does not match the document."""
    data = b"" if body is None else json.dumps(body).encode()
    head = [f"{operation.method} {operation.path} HTTP/1.1", "Host: localhost", "Accept: application/json",
            "Connection: close", f"Content-Length: {len(data)}"]
    if body is not None:
        head.append("Content-Type: application/json")
    request = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + data
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    client.settimeout(timeout)
    try:
        client.connect(path)
        client.sendall(request)
        answer = bytearray()
        while len(answer) <= MAX_ANSWER:
            chunk = client.recv(65536)
            if not chunk:
                break
            answer += chunk
    except FileNotFoundError:
        raise RemoteError(f"no API socket at {path}") from None
    except ConnectionRefusedError:
        raise RemoteError(f"nobody listens on {path} (has the VM ended?)") from None
    except socket.timeout:
        raise RemoteError(f"no answer from {path} within {timeout:g} s") from None
    except OSError as error:
        raise RemoteError(f"{path}: {error.strerror or error}") from None
    finally:
        client.close()
    try:
        parsed = parse_response(bytes(answer))
        payload = json.loads(parsed.body) if parsed.body else None
        operation.check_response(parsed.status, payload)
    except (ValueError, SchemaError) as error:
        raise RemoteError(f"the answer to {operation.name} does not follow the API document: {error}") from None
    return parsed.status, payload


def run(args):
    """`pyvmm remote`: the exit status."""
    operation = document().by_command[args.remote_command]
    status, payload = call(args.api_socket, operation, body_for(operation, args))
    if status >= 400:
        raise RemoteError(payload["error"] if isinstance(payload, dict) else f"status {status}")
    if payload is not None:
        print(json.dumps(payload, indent=2))
    return 0
