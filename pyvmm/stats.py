"""Exit counters kept for every run: per exit reason, per port, per MMIO address."""

from .kvm.vcpu import exit_reason_name

IN, OUT = 0, 1
DIRECTION_NAMES = ("in", "out")


class ExitStats:
    """Counters one vCPU updates on its hot path (plain ints and dicts).

    `reasons` is indexed by KVM exit reason; `ports` is keyed by
    (port << 1 | direction); `mmio` by (address << 1 | is_write). `ports`
    and `mmio` count accesses: exits, and the writes the fast path took from
    KVM's coalesced ring without an exit, which `coalesced` counts.
    """

    def __init__(self):
        self.reasons = [0] * 64
        self.ports = {}
        self.mmio = {}
        self.interrupted = 0
        self.coalesced = 0

    def count_unexited_writes(self, address, pio, writes=1):
        """Writes that reached a device without an exit (coalesced ring, ioeventfd)."""
        table, key = (self.ports if pio else self.mmio), address << 1 | 1
        table[key] = table.get(key, 0) + writes
        self.coalesced += writes

    def merge(self, other):
        for reason, count in enumerate(other.reasons):
            self.reasons[reason] += count
        for key, count in other.ports.items():
            self.ports[key] = self.ports.get(key, 0) + count
        for key, count in other.mmio.items():
            self.mmio[key] = self.mmio.get(key, 0) + count
        self.interrupted += other.interrupted
        self.coalesced += other.coalesced

    @property
    def total(self):
        return sum(self.reasons)

    def by_reason(self):
        """{reason name: count} for reasons that occurred."""
        return {exit_reason_name(reason): count for reason, count in enumerate(self.reasons) if count}

    def by_port(self):
        """{(port, "in"|"out"): count}."""
        return {(key >> 1, DIRECTION_NAMES[key & 1]): count for key, count in self.ports.items()}

    def by_mmio(self):
        """{(address, "read"|"write"): count}."""
        return {(key >> 1, ("read", "write")[key & 1]): count for key, count in self.mmio.items()}

    def as_dict(self, result=None):
        """The counters as plain data (`--stats=json`)."""
        data = {
            "exits": self.total,
            "kicks": self.interrupted,
            "coalesced": self.coalesced,
            "reasons": self.by_reason(),
            "ports": [{"port": port, "dir": direction, "count": count}
                      for (port, direction), count in sorted(self.by_port().items())],
            "mmio": [{"addr": addr, "dir": access, "count": count}
                     for (addr, access), count in sorted(self.by_mmio().items())],
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
        if self.coalesced:
            lines.append(f"coalesced writes: {self.coalesced} (no exit; counted below by port)")
        for name, count in sorted(self.by_reason().items(), key=lambda item: -item[1]):
            lines.append(f"  {name:<16} {count:>10} {100.0 * count / max(total, 1):6.2f}%")
        if self.ports:
            lines.append("port I/O:")
            for (port, direction), count in sorted(self.by_port().items(), key=lambda item: -item[1]):
                label = port_label(port)
                lines.append(f"  {port:#06x} {direction:<3} {count:>10}  {label}".rstrip())
        if self.mmio:
            lines.append("MMIO:")
            for (addr, access), count in sorted(self.by_mmio().items(), key=lambda item: -item[1]):
                lines.append(f"  {addr:#014x} {access:<5} {count:>10}")
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
