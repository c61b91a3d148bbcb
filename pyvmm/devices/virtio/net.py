"""virtio network device (virtio 1.2, 5.1) on a TAP device.

Queue 0 (receiveq1) takes frames from the TAP into the driver's writable
buffers, queue 1 (transmitq1) sends the driver's frames to the TAP. Every
frame, both ways, starts with the 12-byte struct virtio_net_hdr (its
num_buffers field included, as VIRTIO_F_VERSION_1 has it), which the TAP
(IFF_VNET_HDR) reads and writes as it is.

Features offered: VIRTIO_NET_F_MAC (the configured address),
VIRTIO_NET_F_STATUS (link up), VIRTIO_NET_F_MRG_RXBUF, and the checksum
and TSO offloads, CSUM / HOST_TSO4 / HOST_TSO6 / HOST_ECN for transmitted
frames and GUEST_CSUM / GUEST_TSO4 / GUEST_TSO6 / GUEST_ECN for received
ones, with the dependencies of 5.1.3.1 enforced at FEATURES_OK. At
DRIVER_OK the TAP is told which received offloads the driver took
(TUNSETOFFLOAD); it then computes checksums and segments frames for a
driver that took none. A header asking for an offload the driver did not
negotiate is dropped (and counted), both ways.

Receiving, on the device's worker thread: the worker watches the TAP's
descriptor while the driver has buffers, reads one frame at a time into a
buffer of the largest frame size, and copies it into the driver's buffers:
one chain (without MRG_RXBUF: a frame longer than the chain is dropped and
counted, the chain is kept for the next), or as many chains as it takes
(num_buffers), returned to the driver together. When the driver has no
buffers the frame waits, the worker stops watching the TAP, and the
kernel's queue of the TAP (bounded; it drops beyond it) holds the rest:
pyvmm keeps at most one frame. A notification on the receive queue starts
it again.

Transmitting: each chain's readable bytes are one frame, header first,
written to the TAP with one writev from guest memory. A chain shorter than
the header breaks the driver's rules (DEVICE_NEEDS_RESET, as QEMU); a
frame shorter than an Ethernet header or longer than MAX_FRAME is dropped
and counted.

Rate limiters (pyvmm.devices.ratelimit), one per direction: a frame
costs one operation and its length in bytes. A refused frame stays where
it is (in the TAP for receive, in the ring for transmit) until a timer on
the worker serves the queue again.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

from ..state import StateReader
from .device import VirtioDevice
from .queue import DescriptorChain, QueueError, SplitQueue
from .tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN

# 5.1.3 Feature bits.
F_CSUM = 0
F_GUEST_CSUM = 1
F_MAC = 5
F_GUEST_TSO4 = 7
F_GUEST_TSO6 = 8
F_GUEST_ECN = 9
F_HOST_TSO4 = 11
F_HOST_TSO6 = 12
F_HOST_ECN = 13
F_MRG_RXBUF = 15
F_STATUS = 16

OFFLOADS = (1 << F_CSUM | 1 << F_GUEST_CSUM | 1 << F_GUEST_TSO4 | 1 << F_GUEST_TSO6 | 1 << F_GUEST_ECN
            | 1 << F_HOST_TSO4 | 1 << F_HOST_TSO6 | 1 << F_HOST_ECN)
# 5.1.3.1: a feature and the ones it needs (any one of them).
DEPENDENCIES = {F_GUEST_TSO4: (F_GUEST_CSUM,), F_GUEST_TSO6: (F_GUEST_CSUM,),
                F_GUEST_ECN: (F_GUEST_TSO4, F_GUEST_TSO6), F_HOST_TSO4: (F_CSUM,),
                F_HOST_TSO6: (F_CSUM,), F_HOST_ECN: (F_HOST_TSO4, F_HOST_TSO6)}
# Received offloads as the TAP's TUNSETOFFLOAD flags.
TAP_OFFLOADS = ((F_GUEST_CSUM, TUN_F_CSUM), (F_GUEST_TSO4, TUN_F_TSO4), (F_GUEST_TSO6, TUN_F_TSO6),
                (F_GUEST_ECN, TUN_F_TSO_ECN))

# 5.1.4 Configuration: mac, status, max_virtqueue_pairs.
CONFIG = struct.Struct("<6sHH")
S_LINK_UP = 1

# 5.1.6 The header of every frame.
HEADER = struct.Struct("<BBHHHHH")    # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
HDR_F_NEEDS_CSUM = 1
HDR_F_DATA_VALID = 2
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_ECN = 0, 1, 3, 4, 0x80

RECEIVE, TRANSMIT = 0, 1
ETH_HLEN = 14
MAX_FRAME = 65550                     # a 64 KiB TSO segment's frame (5.1.6.3: buffers of 65562 with the header)
MAX_IOVECS = 1024                     # writev's limit (IOV_MAX)
TAP_RETRY = 0.001                     # seconds before a frame the TAP did not take is tried again

COUNTERS = ("rx_packets", "rx_bytes", "rx_dropped", "tx_packets", "tx_bytes", "tx_dropped",
            "rx_throttled", "tx_throttled")


def parse_mac(text: str) -> bytes:
    """'52:54:00:12:34:56' -> 6 bytes; ValueError for anything else."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(part) == 2 for part in parts):
        raise ValueError(f"{text!r} is not a MAC address (six hex bytes separated by ':')")
    mac = bytes(int(part, 16) for part in parts)
    if mac[0] & 1:
        raise ValueError(f"{text!r} is a multicast address")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in mac)


def net_ids(nets) -> List[str]:
    """Each network device's id: its own `id`, or net0, net1... by position."""
    return [net.id if net.id is not None else f"net{index}" for index, net in enumerate(nets)]


class VirtioNet(VirtioDevice):
    device_id = 1
    queue_count = 2
    name = "virtio-net"
    features = 1 << F_MAC | 1 << F_STATUS | 1 << F_MRG_RXBUF | OFFLOADS

    def __init__(self, tap, mac: bytes, net_id: str = "net0", rx_limiter=None, tx_limiter=None) -> None:
        """`tap`: a pyvmm.devices.virtio.tap.Tap (or anything with its fd,
        read_frame, write_frame, set_offload and close); `mac`: 6 bytes."""
        super().__init__()
        if len(mac) != 6:
            raise ValueError("a MAC address has 6 bytes")
        self.tap = tap
        self.mac = bytes(mac)
        self.id = net_id
        self.rx_limiter = rx_limiter
        self.tx_limiter = tx_limiter
        self.link_up = True
        self._frame = bytearray(HEADER.size + MAX_FRAME + 1)    # +1: a longer frame shows as too long
        self._frame_view = memoryview(self._frame)
        self._frame_length = 0              # a frame read from the TAP, waiting for buffers (0: none)
        self._reading = False               # the worker watches the TAP
        self._rx_served = False
        self._rx_stalled_at: Optional[int] = None   # avail index a too-short set of buffers was seen at
        self._rx_timer = self._tx_timer = None
        self._negotiated = 0
        self.tap_error: Optional[str] = None       # why the TAP stopped giving frames
        for counter in COUNTERS:
            setattr(self, counter, 0)

    # --- configuration and feature negotiation ------------------------------------------
    def config(self) -> bytes:
        return CONFIG.pack(self.mac, S_LINK_UP if self.link_up else 0, 1)

    def accept_features(self, features: int) -> bool:
        for feature, needs in DEPENDENCIES.items():
            if features >> feature & 1 and not any(features >> need & 1 for need in needs):
                return False
        return True

    def set_link(self, up: bool) -> None:
        """The link status the driver reads (VIRTIO_NET_S_LINK_UP), with a
        configuration-change interrupt when it changes."""
        if bool(up) != self.link_up:
            self.link_up = bool(up)
            if self.transport is not None:
                self.transport.config_changed()

    def activate(self) -> None:
        self._negotiated = self.transport.negotiated
        self._set_offload(self._negotiated)

    def reset(self) -> None:
        self._negotiated = 0
        self._set_offload(0)
        if self.transport is not None and self.transport.context is not None:
            self.transport.context.worker.call(self._after_reset)

    def _set_offload(self, negotiated: int) -> None:
        flags = 0
        for feature, flag in TAP_OFFLOADS:
            if negotiated >> feature & 1:
                flags |= flag
        try:
            self.tap.set_offload(flags)
        except OSError:
            pass              # the TAP then keeps what it had; frames it offloads wrongly are dropped

    def _after_reset(self) -> None:
        """On the worker, after a reset: no more reading until the driver is back."""
        self._stop_reading()
        self._frame_length = 0          # a frame read for the old driver is not the new one's
        self._rx_stalled_at = None
        for timer in (self._rx_timer, self._tx_timer):
            if timer is not None:
                timer.cancel()
        self._rx_timer = self._tx_timer = None

    def _has(self, feature: int) -> bool:
        return bool(self._negotiated >> feature & 1)

    # --- the worker's side -------------------------------------------------------------
    def process(self, queue_index: int, queue: SplitQueue) -> bool:
        if queue_index == TRANSMIT:
            return self._transmit(queue)
        return self._receive(queue)

    def _start_reading(self) -> None:
        if not self._reading and self.tap.fd >= 0 and self.tap_error is None:
            self._reading = True
            self.transport.context.worker.watch(self.tap.fd, self._tap_readable)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.transport.context.worker.unwatch(self.tap.fd)

    def _tap_readable(self) -> None:
        self._rx_served = False
        self.transport.run_queue(RECEIVE)
        if not self._rx_served:        # the queue is not running (reset, not ready, needs a reset)
            self._stop_reading()

    # --- receive ----------------------------------------------------------------------------
    def _receive(self, queue: SplitQueue) -> bool:
        self._rx_served = True
        while True:
            if self._rx_timer is not None:
                self._stop_reading()
                return False
            if not self._frame_length:
                try:
                    length = self.tap.read_frame(self._frame)
                except OSError as error:        # the TAP was deleted under us: the link goes down
                    self.tap_error = error.strerror or str(error)
                    self._stop_reading()
                    self.set_link(False)
                    return False
                if length is None:
                    self._start_reading()
                    return False
                if not self._received_frame_ok(length):
                    self.rx_dropped += 1
                    continue
                self._frame_length = length
            chains = self._gather(queue)
            if chains is None:
                self._stop_reading()
                return self._wait_for_buffers(queue)
            if not chains:
                continue                 # dropped: too long for the driver's buffers
            wait = self.rx_limiter.consume(self._frame_length - HEADER.size) if self.rx_limiter else 0
            if wait:
                queue.undo_pop(len(chains))
                self.rx_throttled += 1
                self._stop_reading()
                self._rx_timer = self.transport.context.worker.call_later(wait, self._rx_refilled)
                return False
            self._copy_frame(queue, chains)

    def _wait_for_buffers(self, queue: SplitQueue) -> bool:
        """process()'s answer when the waiting frame needs more buffers than
        the driver made available: True (look again once notifications are
        on) the first time, False once the ring was seen unchanged with
        notifications on, so a driver that posted too few buffers for a
        merged frame gets a wait for its next notification, not a worker
        spinning over the same buffers."""
        if queue.last_avail == queue.avail_seen:
            self._rx_stalled_at = None
            return True                  # none at all: the transport looks once more
        if self._rx_stalled_at == queue.avail_seen:
            return False
        self._rx_stalled_at = queue.avail_seen
        return True

    def _rx_refilled(self) -> None:
        self._rx_timer = None
        self.transport.serve(RECEIVE)

    def _received_frame_ok(self, length: int) -> bool:
        """Whether a frame from the TAP can go to this driver; fixes its
        header's flags for a driver without GUEST_CSUM (5.1.6.4)."""
        if length < HEADER.size + ETH_HLEN or length > HEADER.size + MAX_FRAME:
            return False
        flags, gso_type = self._frame[0], self._frame[1]
        if not self._has(F_GUEST_CSUM):
            if flags & HDR_F_NEEDS_CSUM:
                return False
            self._frame[0] = 0
        gso = gso_type & ~GSO_ECN
        if gso_type & GSO_ECN and not self._has(F_GUEST_ECN):
            return False
        return gso == GSO_NONE or (gso == GSO_TCPV4 and self._has(F_GUEST_TSO4)) or (
            gso == GSO_TCPV6 and self._has(F_GUEST_TSO6))

    def _gather(self, queue: SplitQueue) -> Optional[List[Tuple[DescriptorChain, int]]]:
        """The chains the waiting frame goes into, with the bytes each takes;
        None when the driver has not posted enough yet (nothing is kept
        popped), [] when the frame was dropped as too long for them."""
        remaining = self._frame_length
        chains: List[Tuple[DescriptorChain, int]] = []
        merge = self._has(F_MRG_RXBUF)
        while remaining:
            chain = queue.pop()
            if chain is None:
                queue.undo_pop(len(chains))
                return None
            if chain.writable_length < HEADER.size:
                raise QueueError(f"receive buffer of {chain.writable_length} writable bytes, "
                                 f"less than the {HEADER.size}-byte header")
            take = min(chain.writable_length, remaining)
            chains.append((chain, take))
            remaining -= take
            if remaining and (not merge or len(chains) == queue.size):
                queue.undo_pop(len(chains))     # it can never fit: the buffers stay for the next frame
                self._frame_length = 0
                self.rx_dropped += 1
                return []
        return chains

    def _copy_frame(self, queue: SplitQueue, chains: List[Tuple[DescriptorChain, int]]) -> None:
        struct.pack_into("<H", self._frame, HEADER.size - 2, len(chains))      # num_buffers
        source, done, used = self._frame_view, 0, []
        for chain, take in chains:
            chain.write(source[done:done + take])
            used.append((chain.head, take))
            done += take
        queue.push_all(used)
        self._rx_stalled_at = None
        self.rx_packets += 1
        self.rx_bytes += self._frame_length - HEADER.size
        self._frame_length = 0

    # --- transmit ---------------------------------------------------------------------------
    def _transmit(self, queue: SplitQueue) -> bool:
        while True:
            if self._tx_timer is not None:
                return False
            chain = queue.pop()
            if chain is None:
                return True
            if chain.readable_length < HEADER.size:
                raise QueueError(f"transmit chain of {chain.readable_length} readable bytes, "
                                 f"less than the {HEADER.size}-byte header")
            length = chain.readable_length - HEADER.size
            header = bytearray(chain.read(0, HEADER.size))
            if not self._sendable(header, length):
                self.tx_dropped += 1
                queue.push(chain.head, 0)
                continue
            wait = self.tx_limiter.consume(length) if self.tx_limiter else 0
            if wait:
                queue.undo_pop()
                self.tx_throttled += 1
                self._tx_timer = self.transport.context.worker.call_later(wait, self._tx_refilled)
                return False
            parts = [header] + chain.readable_views(HEADER.size)
            if len(parts) > MAX_IOVECS:
                parts = [bytes(header) + b"".join(parts[1:])]
            try:
                self.tap.write_frame(parts)
            except BlockingIOError:
                if self.tx_limiter:
                    self.tx_limiter.give_back(length)
                queue.undo_pop()
                self._tx_timer = self.transport.context.worker.call_later(TAP_RETRY, self._tx_refilled)
                return False
            except OSError:             # the TAP refused it (down, a header it does not take)
                self.tx_dropped += 1
            else:
                self.tx_packets += 1
                self.tx_bytes += length
            queue.push(chain.head, 0)

    def _tx_refilled(self) -> None:
        self._tx_timer = None
        self.transport.serve(TRANSMIT)

    def _sendable(self, header: bytearray, length: int) -> bool:
        """Whether a frame's length and header are ones the driver may send;
        clears num_buffers, which the TAP does not read."""
        if length < ETH_HLEN or length > MAX_FRAME:
            return False
        flags, gso_type = header[0], header[1]
        if flags & ~(HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID) or (flags & HDR_F_NEEDS_CSUM and not self._has(F_CSUM)):
            return False
        gso = gso_type & ~GSO_ECN
        if gso_type & GSO_ECN and not self._has(F_HOST_ECN):
            return False
        if not (gso == GSO_NONE or (gso == GSO_TCPV4 and self._has(F_HOST_TSO4))
                or (gso == GSO_TCPV6 and self._has(F_HOST_TSO6))):
            return False
        header[0] = flags & HDR_F_NEEDS_CSUM
        header[HEADER.size - 2:] = b"\0\0"
        return True

    # --- state, counters, life ----------------------------------------------------------------
    def save_state(self) -> dict:
        """The MAC the driver read, the link status, the frame waiting for
        receive buffers (at most one) and the rate limiters' buckets. The
        offloads follow from the negotiated features (the transport's):
        activate() gives them to the TAP again. Counters stay with the
        process that counted."""
        return {"mac": self.mac.hex(), "link_up": self.link_up,
                "frame": bytes(self._frame_view[:self._frame_length]).hex(),
                "rx_limiter": None if self.rx_limiter is None else self.rx_limiter.save_state(),
                "tx_limiter": None if self.tx_limiter is None else self.tx_limiter.save_state()}

    def restore_state(self, reader) -> None:
        mac = reader.data("mac", 6, length=6)
        link_up = reader.boolean("link_up")
        frame = reader.data("frame", HEADER.size + MAX_FRAME)
        limiters = {key: reader.nested(key) for key in ("rx_limiter", "tx_limiter")}
        reader.finish()
        if mac != self.mac:
            raise reader.fail("mac", f"the driver read {format_mac(mac)}; this device has {format_mac(self.mac)} "
                              "(give the snapshot's config.json the MAC of its state)")
        if frame and len(frame) < HEADER.size + ETH_HLEN:
            raise reader.fail("frame", f"a waiting frame of {len(frame)} bytes (at least "
                              f"{HEADER.size + ETH_HLEN})")
        for key, limiter in (("rx_limiter", self.rx_limiter), ("tx_limiter", self.tx_limiter)):
            if (limiters[key] is None) != (limiter is None):
                raise reader.fail(key, "a rate limiter's state for a direction configured without one, "
                                  "or none for one with it")
        for key, limiter in (("rx_limiter", self.rx_limiter), ("tx_limiter", self.tx_limiter)):
            if limiter is not None:
                limiter.restore_state(StateReader(limiters[key], f"{reader.device} {key}"))
        self._stop_reading()             # the worker is held: the transport's pass starts it again
        for timer in (self._rx_timer, self._tx_timer):
            if timer is not None:
                timer.cancel()
        self._rx_timer = self._tx_timer = None
        self._rx_stalled_at = None
        self._frame[:len(frame)] = frame
        self._frame_length = len(frame)
        self.link_up = link_up
        self._negotiated = 0
        self._set_offload(0)             # activate() sets the driver's, if it had set DRIVER_OK


    def counters(self) -> dict:
        return {counter: getattr(self, counter) for counter in COUNTERS}

    def close(self) -> None:
        self.tap.close()

    def describe(self) -> str:
        return f"{self.id}: {format_mac(self.mac)} on TAP {self.tap.name}"
