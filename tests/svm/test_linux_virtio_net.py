"""Linux's own virtio_net driver as the client of pyvmm's virtio-net, inside
the SVM host. In a network namespace of its own in L1 (unshare --net): a
TAP (10.0.2.1/24 on L1's side) and a listener; pyvmm runs there with
`--net tap=tap0,mac=...`, and the stock Debian guest

- finds the device with the configured MAC and its link up (carrier 1,
  from VIRTIO_NET_F_STATUS), having negotiated every feature pyvmm offers
  (the checksum and TSO offloads both ways, merged receive buffers,
  indirect descriptors, event index), read from /sys/bus/virtio (busybox
  has no ethtool);
- takes 10.0.2.15/24 and pings L1;
- sends 64 KiB to L1 with nc and gets 64 KiB back, and serves 256 KiB to
  L1 from busybox httpd (checksums compared on both sides); a capture on
  L1's TAP shows frames longer than 1514 bytes both ways, so the offloads
  are used, not only negotiated;
- unloads virtio_net and loads it again (pyvmm resets the device and the
  new driver sets it up afresh), and pings again.

pyvmm's counters (--stats=json) show no drops and agree exactly with L1's
TAP counters. Every packet stays inside L1's namespace.

Not pyvmm's: under nested emulation the guest's CPU is so slow that its TCP
rarely has two segments queued when busybox nc writes (in small pieces), so
nc's traffic leaves the guest as 1514-byte frames; httpd's larger writes
give TSO frames, which is why the guest serves a file.
"""

import hashlib
import json
import os
import random
import shlex
import sys

from pyvmm.devices.virtio.mmio import COMMON_FEATURES
from pyvmm.devices.virtio.net import VirtioNet
from pyvmm.linux import fetch as fetch_linux
from pyvmm.testing.svm.linux_guest import SCRIPT_INIT, LinuxRun, script_initrd

MAC = "52:54:00:12:34:56"
HOST_ADDRESS, GUEST_ADDRESS = "10.0.2.1", "10.0.2.15"
PORT = 5001
SENT = REPLY = 64 << 10             # bytes from the guest over nc, and back from L1
SERVED = 256 << 10                  # bytes L1 fetches from the guest's busybox httpd
REPLY_SEED = 11
PINGS = 3
ETHERNET_FRAME = 1514               # the largest frame without segmentation offload (MTU 1500)

GUEST_SCRIPT = f"""
dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
echo "interface $dev"
echo "mac $(cat /sys/class/net/$dev/address)"
for virtio in /sys/bus/virtio/devices/*; do
    [ "$(cat $virtio/device)" = 0x0001 ] && echo "features $(cat $virtio/features)"
done
ip link set $dev up
for i in $(seq 1 100); do [ "$(cat /sys/class/net/$dev/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
echo "carrier $(cat /sys/class/net/$dev/carrier)"
ip addr add {GUEST_ADDRESS}/24 dev $dev
echo "address $(ip -4 -o addr show dev $dev | awk '{{print $4}}')"
ping -c {PINGS} -W 10 {HOST_ADDRESS} > /tmp/ping 2>&1
echo "ping status $?"
echo "ping received $(sed -n 's/.* \\([0-9]*\\) packets received.*/\\1/p' /tmp/ping)"
mkdir -p /www && dd if=/dev/urandom of=/www/served bs=1024 count={SERVED // 1024} 2>/dev/null
echo "served $(sha256sum /www/served | cut -d' ' -f1)"
httpd -p {GUEST_ADDRESS}:80 -h /www
dd if=/dev/urandom of=/tmp/sent bs=1024 count={SENT // 1024} 2>/dev/null
echo "sent $(sha256sum /tmp/sent | cut -d' ' -f1)"
timeout 120 nc {HOST_ADDRESS} {PORT} < /tmp/sent > /tmp/received
echo "nc status $?"
echo "received $(wc -c < /tmp/received) $(sha256sum /tmp/received | cut -d' ' -f1)"
# The driver unbound and bound again: pyvmm's device is reset and set up anew.
rmmod virtio_net && insmod /pyvmm-modules/virtio_net.ko
echo "reloaded $?"
dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set $dev up && ip addr add {GUEST_ADDRESS}/24 dev $dev
for i in $(seq 1 100); do [ "$(cat /sys/class/net/$dev/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
ping -c 1 -W 10 {HOST_ADDRESS} > /dev/null 2>&1
echo "ping after reload $?"
"""

# L1's end: takes SENT bytes over TCP, fetches SERVED bytes from the guest's
# httpd, answers REPLY bytes of its own and closes; meanwhile it notes the
# largest frame each way on the TAP (segmentation-offloaded frames are larger
# than the 1514 bytes of an Ethernet frame).
LISTENER = f"""
import hashlib, random, socket, sys, threading, urllib.request
largest = {{}}
def capture():
    tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    tap.bind(("tap0", 0))
    while True:
        frame, address = tap.recvfrom(262144)
        way = "to-guest" if address[2] == socket.PACKET_OUTGOING else "from-guest"
        largest[way] = max(largest.get(way, 0), len(frame))
threading.Thread(target=capture, daemon=True).start()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("{HOST_ADDRESS}", {PORT}))
server.listen(1)
server.settimeout(400)
open(sys.argv[1] + ".listening", "w").close()
connection, _ = server.accept()
connection.settimeout(120)
received = bytearray()
while len(received) < {SENT}:
    chunk = connection.recv(65536)
    if not chunk:
        break
    received += chunk
# The guest's nc waits for the reply while L1 fetches from its httpd, which
# writes in large chunks: the guest's TCP sends segmentation-offloaded frames.
fetched = urllib.request.urlopen("http://{GUEST_ADDRESS}/served", timeout=120).read()
connection.sendall(random.Random({REPLY_SEED}).randbytes({REPLY}))
connection.close()
with open(sys.argv[1], "w") as out:
    out.write(f"got {{len(received)}} {{hashlib.sha256(received).hexdigest()}}\\n"
              f"fetched {{len(fetched)}} {{hashlib.sha256(fetched).hexdigest()}}\\n"
              f"largest from guest {{largest.get('from-guest')}}\\nlargest to guest {{largest.get('to-guest')}}\\n")
"""


def _lines_with(prefix, text):
    return [line[len(prefix):].strip() for line in text.splitlines() if line.startswith(prefix)]


def test_linux_virtio_net_driver_exchanges_traffic_with_a_tap_in_l1(svm_host):
    assets = fetch_linux()
    job = svm_host.job_dir
    files = {name: os.path.join(job, name) for name in
             ("net-initrd.cpio.gz", "listener.py", "listener.out", "listener.out.listening",
              "console.log", "pyvmm.err")}
    with open(assets.initramfs, "rb") as base, open(files["net-initrd.cpio.gz"], "wb") as out:
        out.write(base.read() + script_initrd(GUEST_SCRIPT, assets.modules))
    with open(files["listener.py"], "w") as out:
        out.write(LISTENER)
    python = shlex.quote(sys.executable)
    inside = f"""
set -e
ip link set lo up
ip tuntap add tap0 mode tap
echo 1 > /proc/sys/net/ipv6/conf/tap0/disable_ipv6
ip addr add {HOST_ADDRESS}/24 dev tap0
ip link set tap0 up
{python} {files["listener.py"]} {files["listener.out"]} &
listener=$!
for i in $(seq 1 100); do [ -e {files["listener.out.listening"]} ] && break; sleep 0.1; done
set +e
{python} -m pyvmm run {assets.kernel} --initrd {files["net-initrd.cpio.gz"]} --memory 256M --timeout 400 \\
    --cmdline "console=ttyS0 panic=-1 quiet rdinit=/{SCRIPT_INIT}" \\
    --net tap=tap0,mac={MAC} --stats=json > {files["console.log"]} 2> {files["pyvmm.err"]}
echo "pyvmm status $?"
kill $listener 2>/dev/null
wait $listener
# L1's /sys shows its first namespace's devices; /proc/net/dev the reader's.
grep tap0: /proc/net/dev | sed 's/^ *tap0: */tap /'
"""
    try:
        result = svm_host.run(["unshare", "--net", "/bin/sh", "-c", inside], timeout=500)
        texts = {}
        for name in ("console.log", "pyvmm.err", "listener.out"):
            try:
                with open(files[name], errors="replace") as text:
                    texts[name] = text.read()
            except FileNotFoundError:
                texts[name] = ""
    finally:
        for path in files.values():
            if os.path.exists(path):
                os.remove(path)
    status = _lines_with("pyvmm status ", result.stdout)
    run = LinuxRun(int(status[0]) if status else None, texts["console.log"], texts["pyvmm.err"])
    context = (result, run, texts["listener.out"])
    assert result.status == 0 and (run.status, run.script_status) == (0, 0), context
    guest = run.script_output

    assert _lines_with("mac ", guest) == [MAC], context
    assert _lines_with("carrier ", guest) == ["1"], context
    assert _lines_with("address ", guest) == [f"{GUEST_ADDRESS}/24"], context

    # /sys/bus/virtio/devices/*/features: one character per feature bit, bit 0 first.
    features, = _lines_with("features ", guest)
    negotiated = sum(1 << bit for bit, flag in enumerate(features) if flag == "1")
    assert negotiated == COMMON_FEATURES | VirtioNet.features, (hex(negotiated), context)

    assert _lines_with("ping status ", guest) == ["0"], context
    assert _lines_with("ping received ", guest) == [str(PINGS)], context

    listener = texts["listener.out"]
    sent, = _lines_with("sent ", guest)
    assert _lines_with("got ", listener) == [f"{SENT} {sent}"], context
    assert _lines_with("nc status ", guest) == ["0"], context
    reply = hashlib.sha256(random.Random(REPLY_SEED).randbytes(REPLY)).hexdigest()
    assert _lines_with("received ", guest) == [f"{REPLY} {reply}"], context
    served, = _lines_with("served ", guest)
    assert _lines_with("fetched ", listener) == [f"{SERVED} {served}"], context
    # The offloads are used, not only negotiated: TSO frames went through pyvmm both ways.
    from_guest, = _lines_with("largest from guest ", listener)
    to_guest, = _lines_with("largest to guest ", listener)
    assert int(from_guest) > ETHERNET_FRAME and int(to_guest) > ETHERNET_FRAME, context

    assert _lines_with("reloaded ", guest) == ["0"], context
    assert _lines_with("ping after reload ", guest) == ["0"], context

    stats = json.loads(run.stderr.strip().splitlines()[-1])
    counters, = stats["devices"].values()
    assert counters["rx_dropped"] == counters["tx_dropped"] == 0, counters
    assert counters["rx_bytes"] > REPLY and counters["tx_bytes"] > SENT + SERVED, counters
    # pyvmm's counters and L1's TAP's agree exactly: the TAP counts a frame
    # sent to the guest when pyvmm reads it, one from the guest when written.
    # /proc/net/dev: received bytes, packets, errs, drop, ... then transmitted (from the 9th).
    columns = [int(value) for value in _lines_with("tap ", result.stdout)[0].split()]
    tap = {"rx_packets": columns[1], "rx_dropped": columns[3], "tx_packets": columns[9],
           "tx_dropped": columns[11]}
    assert tap["rx_dropped"] == tap["tx_dropped"] == 0, (tap, context)
    assert counters["tx_packets"] == tap["rx_packets"] > PINGS, (counters, tap, context)
    assert counters["rx_packets"] == tap["tx_packets"] > PINGS, (counters, tap, context)
