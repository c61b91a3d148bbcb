"""The API's OpenAPI document (openapi.json, beside this module), read once,
and the small part of JSON Schema it uses, checked by the server on every
request body and by the client on every answer.

An Operation is one path and method of the document: its name (the
operationId, "vm.pause"), the command `pyvmm remote` gives it ("pause"),
its request body's schema and its responses' schemas by status.
"""

import functools
import json
import os
import re

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")
PREFIX = "/api/v1"


class SchemaError(ValueError):
    """A value that does not match its schema; the message says where and why."""


class Operation:
    def __init__(self, document, path, method, spec):
        self.document = document
        self.path = PREFIX + path
        self.method = method.upper()
        self.name = spec["operationId"]
        self.command = self.name.split(".", 1)[1]
        self.summary = spec.get("summary", "")
        body = spec.get("requestBody")
        self.request_schema = body["content"]["application/json"]["schema"] if body else None
        self.responses = {}
        for status, response in spec["responses"].items():
            content = response.get("content", {}).get("application/json")
            self.responses[int(status)] = content["schema"] if content else None

    def arguments(self):
        """[(property, metavar, file_url)] of the request body's properties a
        command line gives, in the document's order (the x-pyvmm-argument ones)."""
        if self.request_schema is None:
            return []
        schema = self.document.resolve(self.request_schema)
        return [(name, spec["x-pyvmm-argument"], bool(spec.get("x-pyvmm-file-url")))
                for name, spec in schema.get("properties", {}).items() if "x-pyvmm-argument" in spec]

    def check_request(self, body):
        if self.request_schema is None:
            if body is not None:
                raise SchemaError("this request takes no body")
            return
        if body is None:
            raise SchemaError("this request needs a JSON body")
        self.document.check(body, self.request_schema, "body")

    def check_response(self, status, body):
        """SchemaError unless the document declares `status` for this operation
        and `body` (None for no body) matches its schema."""
        if status not in self.responses:
            raise SchemaError(f"{self.name}: status {status} is not in the document")
        schema = self.responses[status]
        if schema is None:
            if body is not None:
                raise SchemaError(f"{self.name}: status {status} has no body in the document")
            return
        self.document.check(body, schema, f"{self.name} {status}")


class Document:
    def __init__(self, text):
        self.raw = json.loads(text)
        self.operations = [Operation(self, path, method, spec)
                           for path, methods in self.raw["paths"].items() for method, spec in methods.items()]
        self.by_path = {}
        for operation in self.operations:
            self.by_path.setdefault(operation.path, {})[operation.method] = operation
        self.by_command = {operation.command: operation for operation in self.operations}

    def resolve(self, schema):
        while "$ref" in schema:
            reference = schema["$ref"]
            if not reference.startswith("#/"):
                raise SchemaError(f"unsupported reference {reference}")
            node = self.raw
            for part in reference[2:].split("/"):
                node = node[part]
            schema = node
        return schema

    def check(self, value, schema, where):
        """Raises SchemaError unless `value` matches `schema` (type, nullable,
        enum, required, properties, additionalProperties, items, minimum,
        maxLength, pattern)."""
        schema = self.resolve(schema)
        if value is None:
            if schema.get("nullable"):
                return
            raise SchemaError(f"{where}: null is not allowed")
        kind = schema.get("type")
        if kind is not None and not _is(value, kind):
            raise SchemaError(f"{where}: expected {kind}, got {type(value).__name__}")
        if "enum" in schema and value not in schema["enum"]:
            raise SchemaError(f"{where}: {value!r} is not one of {schema['enum']}")
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(f"{where}: {value} is below {schema['minimum']}")
        if isinstance(value, str):
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                raise SchemaError(f"{where}: longer than {schema['maxLength']} characters")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                raise SchemaError(f"{where}: {value!r} does not match {schema['pattern']}")
        if isinstance(value, dict):
            for name in schema.get("required", ()):
                if name not in value:
                    raise SchemaError(f"{where}: missing {name}")
            properties = schema.get("properties", {})
            extra = schema.get("additionalProperties", True)
            for name, item in value.items():
                if name in properties:
                    self.check(item, properties[name], f"{where}.{name}")
                elif extra is False:
                    raise SchemaError(f"{where}: unexpected {name}")
                elif isinstance(extra, dict):
                    self.check(item, extra, f"{where}.{name}")
        if isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                self.check(item, schema["items"], f"{where}[{index}]")


def _is(value, kind):
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"object": dict, "array": list, "string": str, "boolean": bool}[kind])


@functools.lru_cache(maxsize=1)
def document():
    """The document openapi.json holds (read once)."""
    with open(PATH, encoding="utf-8") as f:
        return Document(f.read())
