"""Exit counters kept for every run: per exit reason, per port, per MMIO address."""

from ..kvm.exits import REASON_COUNT, exit_reason_name

IN, OUT = 0, 1
DIRECTION_NAMES = ("in", "out")
# Distinct ports and MMIO addresses (with direction) counted one by one; what
# a guest scanning more touches lands in OTHER, so the counters stay small.
MAX_PORT_KEYS = MAX_MMIO_KEYS = 4096
OTHER = OTHER_MMIO = -1


class ExitStats:
    """Counters one vCPU updates on its hot path (plain ints and dicts).

    `reasons` is indexed by KVM exit reason; `ports` is keyed by
    (port << 1 | direction), `mmio` by (address << 1 | is_write), at most
    MAX_PORT_KEYS and MAX_MMIO_KEYS of them, the rest under OTHER. `ports` and `mmio`
    count accesses: exits, and the writes that reached a device without
    one, which `coalesced` (KVM's coalesced ring) and `doorbells` (KVM
    ioeventfds) count again.
    """

    def __init__(self):
        self.reasons = [0] * REASON_COUNT
        self.ports = {}
        self.mmio = {}
        self.interrupted = 0
        self.coalesced = 0
        self.doorbells = 0
        self.fast = 0           # exits the fast path's C loop handled without Python

    def count_port(self, key, count=1):
        _count(self.ports, MAX_PORT_KEYS, key, count)

    def count_mmio(self, key, count=1):
        _count(self.mmio, MAX_MMIO_KEYS, key, count)

    def count_write(self, address, pio, writes=1):
        """Writes counted by address (a deferred write delivered late)."""
        key = address << 1 | 1
        if pio:
            self.count_port(key, writes)
        else:
            self.count_mmio(key, writes)

    def merge(self, other):
        """Adds `other`'s counters; safe while its vCPU thread updates them
        (dict.copy() runs without releasing the GIL)."""
        for reason, count in enumerate(other.reasons):
            self.reasons[reason] += count
        for key, count in other.ports.copy().items():
            self.count_port(key, count)
        for key, count in other.mmio.copy().items():
            self.count_mmio(key, count)
        self.interrupted += other.interrupted
        self.coalesced += other.coalesced
        self.doorbells += other.doorbells
        self.fast += other.fast

    @property
    def total(self):
        return sum(self.reasons)

    def by_reason(self):
        """{reason name: count} for reasons that occurred."""
        return {exit_reason_name(reason): count for reason, count in enumerate(self.reasons) if count}

    def by_port(self):
        """{(port, "in"|"out"): count}; ("other", "any") for ports past MAX_PORT_KEYS."""
        return {(("other", "any") if key == OTHER else (key >> 1, DIRECTION_NAMES[key & 1])): count
                for key, count in self.ports.items()}

    def by_mmio(self):
        """{(address, "read"|"write"): count}; ("other", "any") for addresses past MAX_MMIO_KEYS."""
        return {(("other", "any") if key == OTHER else (key >> 1, ("read", "write")[key & 1])): count
                for key, count in self.mmio.items()}

    def as_dict(self, result=None):
        """The counters as plain data (`--stats=json`)."""
        data = {
            "exits": self.total,
            "kicks": self.interrupted,
            "coalesced": self.coalesced,
            "doorbells": self.doorbells,
            "handled_in_c": self.fast,
            "reasons": self.by_reason(),
            "ports": [{"port": port, "dir": direction, "count": count}
                      for (port, direction), count in sorted(self.by_port().items(), key=_address_order)],
            "mmio": [{"addr": addr, "dir": access, "count": count}
                     for (addr, access), count in sorted(self.by_mmio().items(), key=_address_order)],
        }
        if result is not None:
            data["result"] = {"status": result.status, "reason": result.reason}
        return data

    def format(self, port_label=lambda port: "", result=None):
        """The human-readable summary `--stats` prints; `port_label(port)`
        names the device on a port."""
        total = self.total
        lines = [] if result is None else [f"run ended: {result.reason}, status {result.status}"]
        lines.append(f"exits: {total} (and {self.interrupted} kicks out of KVM_RUN)")
        if self.fast:
            lines.append(f"handled in C: {self.fast} of the exits (fast path)")
        if self.coalesced:
            lines.append(f"coalesced writes: {self.coalesced} (no exit; counted below by port)")
        if self.doorbells:
            lines.append(f"doorbell writes: {self.doorbells} (ioeventfd, no exit; counted below)")
        for name, count in sorted(self.by_reason().items(), key=lambda item: -item[1]):
            lines.append(f"  {name:<16} {count:>10} {100.0 * count / max(total, 1):6.2f}%")
        if self.ports:
            lines.append("port I/O:")
            for (port, direction), count in sorted(self.by_port().items(), key=lambda item: -item[1]):
                if isinstance(port, int):
                    lines.append(f"  {port:#06x} {direction:<3} {count:>10}  {port_label(port)}".rstrip())
                else:
                    lines.append(f"  {'(others)':>6} {direction:<3} {count:>10}")
        if self.mmio:
            lines.append("MMIO:")
            for (addr, access), count in sorted(self.by_mmio().items(), key=lambda item: -item[1]):
                where = f"{addr:#014x}" if isinstance(addr, int) else f"{'(others)':>14}"
                lines.append(f"  {where} {access:<5} {count:>10}")
        return "\n".join(lines)


def _count(table, limit, key, count):
    if key in table:
        table[key] += count
    elif len(table) < limit:
        table[key] = count
    else:
        table[OTHER] = table.get(OTHER, 0) + count


def _address_order(item):
    (addr, access), _count = item
    return (not isinstance(addr, int), addr if isinstance(addr, int) else 0, access)


def format_device_counters(devices):
    """--stats' lines for the devices' own counters ({id: {name: value}}), or ""."""
    if not devices:
        return ""
    lines = ["devices:"]
    for name, counters in devices.items():
        lines.append(f"  {name}: " + ", ".join(f"{key} {value}" for key, value in counters.items()))
    return "\n".join(lines)


def format_post_codes(history, start_ns, total):
    """POST-port writes with their time since the run started (boot timing)."""
    if not total:
        return ""
    lines = [f"POST codes (port 0x80): {total} writes"]
    lines += [f"  +{(stamp - start_ns) / 1e6:10.3f} ms  {value:#04x}" for stamp, value in history]
    if total > len(history):
        lines.append(f"  (only the last {len(history)} are kept)")
    return "\n".join(lines)
