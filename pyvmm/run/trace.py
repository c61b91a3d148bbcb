"""`--trace FILE`: one JSON object per line for every VM exit (an after hook)."""

import json
import threading

MAX_LINE = 1 << 16   # a record is below 10 KiB (string I/O data is at most a page, in hex)


class ExitTracer:
    """Writes ExitEvent.as_dict() lines to a file; safe to call from every vCPU thread."""

    def __init__(self, path, port_name=lambda port: "", mmio_name=lambda addr: ""):
        self.file = open(path, "w", buffering=1 << 16)
        self.lock = threading.Lock()
        self.records = 0
        self.port_name = port_name      # the device on a port / MMIO address, for `pyvmm stats`
        self.mmio_name = mmio_name

    def __call__(self, event):
        record = event.as_dict()
        if event.port is not None:
            record["dev"] = self.port_name(event.port)
        elif event.address is not None:
            record["dev"] = self.mmio_name(event.address)
        line = json.dumps(record, separators=(",", ":"))
        with self.lock:
            self.file.write(line + "\n")
            self.records += 1

    def close(self):
        with self.lock:
            if not self.file.closed:
                self.file.close()


def read_trace(path):
    """Yields the records of a trace file; ValueError names the file, the line and the fault.

    Lines are read in binary, at most MAX_LINE bytes each, so neither an
    endless line (/dev/zero) nor a binary file is read whole into memory.
    """
    with open(path, "rb") as trace:
        number = 0
        while True:
            line = trace.readline(MAX_LINE + 1)
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE:
                raise ValueError(f"{path}:{number}: a line longer than {MAX_LINE} bytes "
                                 f"is not a trace record")
            if line.strip():
                yield _record(path, number, line)


# Optional fields of a record and the JSON values they may hold.
_FIELDS = {
    "port": lambda value: _is_int(value) and 0 <= value <= 0xFFFF,
    "addr": lambda value: _is_int(value) and 0 <= value < 1 << 64,
    "handle_ns": lambda value: _is_int(value) and value >= 0,
    "dir": lambda value: isinstance(value, str),
    "dev": lambda value: isinstance(value, str),
}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _record(path, number, line):
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}:{number}: not UTF-8 text, so not a trace") from None
    except (json.JSONDecodeError, RecursionError):
        raise ValueError(f"{path}:{number}: not a JSON trace record") from None
    if not isinstance(record, dict) or not isinstance(record.get("reason"), str):
        raise ValueError(f"{path}:{number}: not an exit record (no \"reason\" string)")
    for name, valid in _FIELDS.items():
        if name in record and not valid(record[name]):
            raise ValueError(f"{path}:{number}: an exit record with a bad {name!r}: "
                             f"{json.dumps(record[name])[:40]}")
    return record


def summarize(records):
    """perf-kvm-stat-like totals: per reason and per device/port/address.

    {"exits": N, "reasons": [{name, count, share, handle_ns}], "targets": [...]}
    sorted by count, most first.
    """
    reasons, targets, total = {}, {}, 0
    for record in records:
        total += 1
        handle = int(record.get("handle_ns", 0))
        _add(reasons, record["reason"], handle)
        if "port" in record:
            _add(targets, f"port {record['port']:#06x} {record.get('dir', '')} "
                          f"{record.get('dev', '')}".rstrip(), handle)
        elif "addr" in record:
            _add(targets, f"mmio {record['addr']:#x} {record.get('dir', '')} "
                          f"{record.get('dev', '')}".rstrip(), handle)
    return {"exits": total, "reasons": _rows(reasons, total), "targets": _rows(targets, total)}


def _add(table, key, handle_ns):
    count, spent = table.get(key, (0, 0))
    table[key] = (count + 1, spent + handle_ns)


def _rows(table, total):
    rows = [{"name": name, "count": count, "share": count / total if total else 0.0,
             "handle_ns": spent} for name, (count, spent) in table.items()]
    return sorted(rows, key=lambda row: (-row["count"], row["name"]))


def format_summary(summary):
    lines = [f"exits: {summary['exits']}"]
    for title, rows in (("reason", summary["reasons"]), ("port / address", summary["targets"])):
        if not rows:
            continue
        lines.append(f"{title:<40} {'count':>10} {'share':>7} {'handling':>12} {'avg':>10}")
        for row in rows:
            average = row["handle_ns"] / row["count"] / 1000
            lines.append(f"{row['name']:<40} {row['count']:>10} {100 * row['share']:6.2f}% "
                         f"{row['handle_ns'] / 1e6:10.3f}ms {average:8.2f}us")
    return "\n".join(lines)
