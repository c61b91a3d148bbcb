#!/bin/bash
# Check the guests under QEMU (TCG), as a stand-in for pyvmm: output,
# exit status, and for exits.bin the exact device-access sequence.
# Needs qemu-system-x86 (apt-get install qemu-system-x86); skips without.
#   guests/run-qemu-tests.sh        exit status 0 = all passed
set -u
cd "$(dirname "$0")"

if ! command -v qemu-system-x86_64 >/dev/null; then
	echo "SKIP: qemu-system-x86_64 not installed"
	exit 0
fi

B=build
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
make -s OUT="$B" || exit 1

QEMU=(qemu-system-x86_64 -accel tcg -display none -serial stdio -no-reboot
      -device isa-debug-exit,iobase=0xf4,iosize=0x04)
TIMEOUT=${TIMEOUT:-10}
TIMED_OUT=124		# what timeout(1) returns: the guest halted
fails=0

# run INPUT QEMU-ARGS...: feed INPUT (printf %b escapes) to the UART;
# output lands in $TMP/out, exit status in $rc.
run() {
	local input=$1
	shift
	printf '%b' "$input" |
		timeout "$TIMEOUT" "${QEMU[@]}" "$@" >"$TMP/out" 2>"$TMP/err"
	rc=$?
}

# check NAME WANT_RC WANT_OUTPUT (printf %b escapes)
check() {
	local name=$1 want_rc=$2 want_out=$3
	printf '%b' "$want_out" >"$TMP/want"
	if [ "$rc" -eq "$want_rc" ] && cmp -s "$TMP/want" "$TMP/out"; then
		echo "ok   $name"
	else
		echo "FAIL $name: status $rc (want $want_rc), output:"
		od -c "$TMP/out" | head -5
		fails=$((fails + 1))
	fi
}

# patch FILE N: store N as the little-endian dword param_n at offset 0x24.
patch() {
	local n=$2
	printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' \
		$((n & 255)) $((n >> 8 & 255)) $((n >> 16 & 255)) $((n >> 24 & 255)))" |
		dd of="$1" bs=1 seek=$((0x24)) conv=notrunc status=none
}

run "" -kernel $B/hello.bin
check hello $TIMED_OUT 'Hello from a pyvmm guest!\n'

for t in '42\n:85' '0\n:1' '7\r\n:15' '127\n:255' '300\n:89' '12x:25'; do
	run "${t%:*}" -kernel $B/status.bin
	check "status ${t%:*}" "${t#*:}" ''
done

run 'hello, world\n\x04after' -kernel $B/echo.bin
check echo $TIMED_OUT 'hello, world\n\nbye\n'

run "" -kernel $B/prot.bin
check prot $((0x41)) 'protected\n'

# real.bin doubles as a boot sector.
run "" -drive file=$B/real.bin,format=raw,if=ide,snapshot=on
check real $((0x21)) 'real\n'

run "" -kernel $B/paging32.bin
check paging32 $((0x45)) 'paging32\ncr4.pae 0\nalias read 0x12345678\nalias write 0xcafef00d\npte 0x00202063\npde 0x00203023\npse read 0x12345678\npse pde 0x000000a3\npage fault cr2 0xdead0000 error 0x00000002\n'

# A triple fault: QEMU exits (-no-reboot) with status 0 and logs it.
run "" -drive file=$B/triple_real.bin,format=raw,if=ide,snapshot=on -d cpu_reset -D "$TMP/triple"
check triple_real 0 'real triple fault\n'
grep -q "Triple fault" "$TMP/triple" || { echo "FAIL triple_real: no triple fault logged"; fails=$((fails + 1)); }

# 64-bit images go through lmboot, which loads them as pyvmm would.
run "" -kernel $B/lmboot.bin -initrd $B/long.bin
check long $((0x61)) 'long\n'

run "" -kernel $B/lmboot.bin -initrd $B/compute.elf
check compute 75 'fnv1a=0xe3db629899874325 sum=2499500025000000\n'

run "" -kernel $B/bench_exit.bin
check "bench_exit default N" 1 ''
cp $B/bench_exit.bin "$TMP/bench3.bin"
patch "$TMP/bench3.bin" 3
run "" -kernel "$TMP/bench3.bin" -trace memory_region_ops_write -D "$TMP/log"
# bench_exit writes port 0x560 (nothing there: QEMU's catch-all 'io').
n=$(grep -c "addr 0x560 value 0x0 size 1 name 'io'" "$TMP/log")
[ "$n" -eq 3 ] || { echo "FAIL bench_exit N=3: saw $n writes"; fails=$((fails + 1)); }
check "bench_exit N=3" 1 ''
cp $B/bench_exit.bin "$TMP/bench0.bin"
patch "$TMP/bench0.bin" 0
run "" -kernel "$TMP/bench0.bin"
check "bench_exit N=0" 1 ''

line='0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n'
cp $B/serial_flood.bin "$TMP/flood.bin"
patch "$TMP/flood.bin" 200
run "" -kernel "$TMP/flood.bin"
check "serial_flood N=200" 1 "$line$line$line${line:0:8}"
TIMEOUT=60 run "" -kernel $B/serial_flood.bin
{ for i in $(seq 16384); do printf '%b' "$line"; done; } >"$TMP/want_flood"
if [ "$rc" -eq 1 ] && cmp -s "$TMP/want_flood" "$TMP/out"; then
	echo "ok   serial_flood default N (1 MiB)"
else
	echo "FAIL serial_flood default N: status $rc, $(wc -c <"$TMP/out") bytes"
	fails=$((fails + 1))
fi

# exits.bin: QEMU has no test device, so reads return all-ones (ports) or
# zero (MMIO) and the ending selector reads 0xff (= halt).  Log the
# accesses and compare them with the documented sequence.
run "" -kernel $B/exits.bin -trace 'memory_region_ops_*' -d guest_errors \
	-D "$TMP/log"
awk '
/memory_region_ops_(read|write)/ && / name .io.$/ {
	a = $0; sub(/.* addr /, "", a); sub(/ .*/, "", a)
	if (a !~ /^0x5(0[0-9a-f]|ff)$/) next
	s = $0; sub(/.* size /, "", s); sub(/ .*/, "", s)
	v = $0; sub(/.* value /, "", v); sub(/ .*/, "", v)
	if ($1 ~ /write/) print "out", a, s, v; else print "in", a, s
}
/^Invalid (read|write) at addr 0xD/ {
	a = tolower($5); sub(/,$/, "", a)
	s = $0; sub(/.*size /, "", s); sub(/,.*/, "", s)
	print "mmio-" $2, a, s
}' "$TMP/log" >"$TMP/got"
cat >"$TMP/want" <<'SEQ'
out 0x500 1 0x11
out 0x500 2 0x2233
out 0x500 4 0x44556677
in 0x501 1
out 0x508 4 0xff
in 0x502 2
out 0x508 4 0xffff
in 0x504 4
out 0x508 4 0xffffffff
out 0x50c 1 0x45
out 0x50c 1 0x58
out 0x50c 1 0x49
out 0x50c 1 0x54
out 0x50c 1 0x53
in 0x50d 1
in 0x50d 1
in 0x50d 1
in 0x50d 1
out 0x508 4 0xffffffff
out 0x50a 2 0xa1a2
out 0x50a 2 0xb1b2
in 0x5ff 1
out 0x508 4 0xff
mmio-write 0xd0000000 1
mmio-write 0xd0000002 2
mmio-write 0xd0000004 4
mmio-read 0xd0000010 4
out 0x508 4 0x0
mmio-read 0xd0000020 1
out 0x508 4 0x0
in 0x50f 1
SEQ
if [ "$rc" -eq $TIMED_OUT ] && cmp -s "$TMP/want" "$TMP/got"; then
	echo "ok   exits access sequence"
else
	echo "FAIL exits access sequence (status $rc):"
	diff "$TMP/want" "$TMP/got" | head -20
	fails=$((fails + 1))
fi

# The endings, selector forced at build time (test-only variant).
# -no-reboot turns a triple fault into a clean QEMU exit (status 0).
# Ending 5 differs from pyvmm: SeaBIOS leaves the PIT ticking, so the
# first timer IRQ after sti finds no usable IDT and the VM resets.
for t in 0:$TIMED_OUT 1:0 2:$((0x85)) 3:$((0x20f & 255)) 4:$TIMED_OUT \
	 5:0 6:0 9:$TIMED_OUT; do
	e=${t%:*}
	make -s OUT="$TMP/end$e" GUEST_DEFS=-DEXITS_FORCE_ENDING=$e \
		"$TMP/end$e/exits.bin" || exit 1
	TIMEOUT=3 run "" -kernel "$TMP/end$e/exits.bin"
	check "exits ending $e" "${t#*:}" ''
done

# ---- Platform guests (README "Platform guests"): boot protocols and PC
# devices.  Host-specific lines (memory maps, dates, fw_cfg files, extra
# ACPI tables) are filtered out of the exact comparison and checked by rule.

# filter CMD...: rewrite $TMP/out through CMD (before check).
filter() {
	"$@" <"$TMP/out" >"$TMP/filtered"
	mv "$TMP/filtered" "$TMP/out"
}

# has NAME REGEX...: every extended regex matches a whole line of $TMP/out.
has() {
	local name=$1 re
	shift
	for re in "$@"; do
		if ! grep -qxE -- "$re" "$TMP/out"; then
			echo "FAIL $name: no line matching /$re/ in:"
			head -20 "$TMP/out"
			fails=$((fails + 1))
			return
		fi
	done
	echo "ok   $name"
}

# run_prompted PROMPT INPUT QEMU-ARGS...: like run, but INPUT is sent only
# once PROMPT (a fixed string) has appeared in the output.
run_prompted() {
	local prompt=$1 input=$2 pid i
	shift 2
	rm -f "$TMP/in"
	mkfifo "$TMP/in"
	timeout "$TIMEOUT" "${QEMU[@]}" "$@" <"$TMP/in" >"$TMP/out" 2>"$TMP/err" &
	pid=$!
	exec 3>"$TMP/in"
	for i in $(seq $((TIMEOUT * 20))); do
		grep -qF -- "$prompt" "$TMP/out" && break
		sleep 0.05
	done
	printf '%b' "$input" >&3
	exec 3>&-
	wait $pid
	rc=$?
}

MB_MMAP='(mem_lower|mem_upper|mmap) '
printf 'module one data here 0123456789' >"$TMP/m1"	# 31 bytes
printf '\x00\x01\x02' >"$TMP/m2"
for k in mbinfo.elf mbinfo.bin; do
	run "" -m 128 -kernel $B/$k -append "foo=bar  baz" \
		-initrd "$TMP/m1 arg1 arg2,$TMP/m2"
	cp "$TMP/out" "$TMP/full"
	has "$k memory" 'mem_lower 6[0-9][0-9]' 'mem_upper 1[0-9]{5}' \
		'mmap 0x0{16} 0x0{11}9[0-9a-f]{4} 1' \
		'mmap 0x0{10}100000 0x0{9}7[0-9a-f]{6} 1'
	filter grep -vE "^$MB_MMAP"
	check "$k" 1 "magic 0x2badb002\nflags 0x0000024f\ncmdline $B/$k foo=bar  baz\nloader qemu\nmods 2\nmod 0 cmdline $TMP/m1 arg1 arg2\nmod 0 size 31 aligned 1 head 6d6f64756c65206f6e65206461746120\nmod 1 cmdline $TMP/m2\nmod 1 size 3 aligned 1 head 000102\n"
done
run "" -m 128 -kernel $B/mbinfo.elf
filter grep -vE "^$MB_MMAP"
check "mbinfo.elf, no args or modules" 1 "magic 0x2badb002\nflags 0x0000024f\ncmdline $B/mbinfo.elf \nloader qemu\nmods 0\n"

# QEMU boots an ELF with the Xen PHYS32_ENTRY note through its pvh.bin
# option ROM: one -initrd module (no module command lines), and the
# command line without the kernel path.
run "" -m 128 -kernel $B/pvhinfo.elf -append "foo=bar  baz" -initrd "$TMP/m1"
has "pvhinfo memmap" 'memmap_entries [0-9]+' \
	'memmap 0x0{16} 0x0{11}9[0-9a-f]{4} 1' \
	'memmap 0x0{10}100000 0x0{9}7[0-9a-f]{6} 1'
filter grep -vE '^memmap'
check pvhinfo 1 "magic 0x336ec578\nversion 1\nflags 0x00000000\ncmdline foo=bar  baz\nnr_modules 1\nmod 0 size 31 head 6d6f64756c65206f6e65206461746120\nmod 0 cmdline absent\nrsdp ok\n"
run "" -m 128 -kernel $B/pvhinfo.elf
filter grep -vE '^memmap'
check "pvhinfo, no args or modules" 1 "magic 0x336ec578\nversion 1\nflags 0x00000000\ncmdline \nnr_modules 0\nrsdp ok\n"

# AP lines come in any order: compare sorted.
for n in 1 2 4; do
	want="bsp 0\n"
	for i in $(seq 1 $((n - 1))); do want="${want}cpu $i up\n"; done
	printf '%b' "${want}cpus $n\n" | sort >"$TMP/want_sorted"
	run "" -m 128 -smp $n -kernel $B/smp.bin
	filter sort
	check "smp -smp $n" $(((n << 1 | 1) & 255)) "$(cat "$TMP/want_sorted")\n"
done

run_prompted "irqecho ready" 'hello, irq\n\x04after' -m 128 -kernel $B/irqecho.bin
check irqecho 1 'irqecho ready\nhello, irq\n\nbye\n'

# QEMU's multiboot loader puts no command line in fw_cfg (only the Linux
# and PVH paths do): cmdline_size 0.  ID 3: traditional interface + DMA.
run "" -m 128 -smp 2 -kernel $B/fwcfg.bin -append "a b=c"
has "fwcfg files" 'files [0-9]+' 'file 0x000000[2-9a-f][0-9a-f] [0-9]+ etc/e820'
filter grep -vE '^files? '
check fwcfg 1 'signature QEMU\nid 0x00000003\nram_size 0x0000000008000000\nnb_cpus 2\ncmdline_size 0\ncmdline \n'
run "" -m 128 -smp 2 -kernel $B/fwcfg-pvh.elf -append "a  b=c"
filter grep -vE '^files? '
check "fwcfg-pvh (PVH: cmdline in fw_cfg)" 1 'signature QEMU\nid 0x00000003\nram_size 0x0000000008000000\nnb_cpus 2\ncmdline_size 7\ncmdline a  b=c\n'

# Powers off through PM1a_CNT: QEMU exits with 0.
run "" -m 128 -kernel $B/acpi.bin
has acpi 'rsdp ok [0-9]+' '(RSDT|XSDT) ok' 'FACP ok' 'APIC ok' 'DSDT ok' \
	'pm1a_cnt 0x[0-9a-f]{8}' 's5 [0-7]'
filter grep -vE '^(rsdp ok|pm1a_cnt|s5) | ok$'	# leaves bad tables, failures
check "acpi status" 0 ''

run "" -m 128 -kernel $B/reset.bin
check reset 0 'reset\n'

# The CMOS memory bytes follow PC firmware (QEMU's pc_cmos_init): 0x30/31
# = KiB above 1 MiB, at most 65535; 0x34/35 = 64 KiB units above 16 MiB.
for t in 128:65535:1792 32:31744:256; do
	m=${t%%:*} w=${t#*:}
	run "" -m $m -kernel $B/rtc.bin
	has "rtc -m $m date" \
		"date ($(date -u -d yesterday +%F)|$(date -u +%F)|$(date -u -d tomorrow +%F))" \
		'time ([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]'
	filter grep -vE '^(date|time) '
	check "rtc -m $m" 1 "status_b 0x02\ncmos_30 ${w%:*}\ncmos_34 ${w#*:}\n"
done

# S3: the RTC alarm wakes it a second later, at its real-mode waking vector.
run "" -m 128 -kernel $B/s3.bin
check "s3 (RTC alarm)" 1 's3 1\nsleeping\nresumed\ncs 0x00003000\ncr0 0x00000010\npm1_sts 0x00008401\npm1_en 0x00000000\nstopped at once\nrtc_b 0x02\nalarm second ok\n'
# No waking vector: SeaBIOS reboots, which -no-reboot turns into an exit.
cp $B/s3.bin "$TMP/s3-no-vector.bin"
patch "$TMP/s3-no-vector.bin" 11
run "" -m 128 -kernel "$TMP/s3-no-vector.bin"
check "s3 (no waking vector)" 0 's3 1\nsleeping\n'

if [ $fails -ne 0 ]; then
	echo "$fails FAILED"
	exit 1
fi
echo "all passed"
