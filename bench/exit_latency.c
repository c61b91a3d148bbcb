/*
 * exit_latency.c: the C baseline for bench/exit_latency.
 *
 * Runs a flat 32-bit protected-mode image (bench_exit.bin, already patched
 * with N) on one vCPU, entered exactly as pyvmm enters it (see
 * pyvmm/arch/x86_64/{gdt,layout,modes}.py and pyvmm/vmm.py) on a VM with the same
 * in-kernel irqchip and PIT, and handles every KVM_EXIT_IO in C: port 0xf4
 * (debug-exit) ends the run, any other port (the benchmark's) is a no-op.
 * MSRs, XCR0 and the LAPIC LINT pins stay at KVM's defaults.
 *
 *   usage: exit_latency_c IMAGE
 *   prints: exits=<count> ns=<loop total> ns_per_exit=<float> user_ns=<..> sys_ns=<..>
 *   (user_ns and sys_ns: the process's CPU time during the loop, from getrusage)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#define RAM_SIZE	(128UL << 20)
#define LOAD_ADDR	0x100000UL	/* layout.HIGH_MEMORY: load address and entry */
#define BOOT_GDT	0x500		/* layout.BOOT_GDT */
#define BOOT_IDT	0x540		/* layout.BOOT_IDT */
#define BOOT_STACK_TOP	0x8ff0		/* layout.BOOT_STACK_TOP */
#define TSS_ADDR	0xfffbd000UL	/* vmm.TSS_ADDR */
#define IDENTITY_MAP	0xfffbc000ULL	/* vmm.IDENTITY_MAP_ADDR */
#define DEBUG_EXIT_PORT	0xf4
#define MAX_CPUID	256

/* Descriptor flags as in gdt.py. */
#define CODE32	0xc09b
#define DATA	0xc093
#define TSS32	0x008b

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("exit_latency_c: ", stderr);
	vfprintf(stderr, fmt, ap);
	if (errno)
		fprintf(stderr, ": %s", strerror(errno));
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static int xioctl(int fd, unsigned long request, const char *name, void *arg)
{
	int ret = ioctl(fd, request, arg);

	if (ret < 0)
		die("%s", name);
	return ret;
}
#define IOCTL(fd, req, arg) xioctl(fd, req, #req, (void *)(arg))

/* gdt.descriptor() */
static uint64_t descriptor(uint64_t flags, uint64_t base, uint64_t limit)
{
	return (base & 0xff000000) << 32 | (flags & 0xf0ff) << 40 | (limit & 0xf0000) << 32
		| (base & 0x00ffffff) << 16 | (limit & 0x0ffff);
}

/* gdt.segment() */
static struct kvm_segment segment(uint16_t selector, unsigned flags, uint32_t limit)
{
	unsigned granular = (flags >> 15) & 1;

	return (struct kvm_segment) {
		.base = 0, .selector = selector,
		.limit = granular ? limit << 12 | 0xfff : limit,
		.type = flags & 0xf, .present = (flags >> 7) & 1, .dpl = (flags >> 5) & 3,
		.db = (flags >> 14) & 1, .s = (flags >> 4) & 1, .l = (flags >> 13) & 1,
		.g = granular, .avl = (flags >> 12) & 1,
	};
}

static size_t load_image(const char *path, uint8_t *ram)
{
	FILE *file = fopen(path, "rb");
	size_t size;

	if (!file)
		die("open %s", path);
	size = fread(ram + LOAD_ADDR, 1, RAM_SIZE - LOAD_ADDR, file);
	if (ferror(file) || size == 0)
		die("read %s", path);
	fclose(file);
	return size;
}

/* modes.enter(..., "protected", LOAD_ADDR) */
static void enter_protected(int vcpu, uint8_t *ram)
{
	uint64_t gdt[] = {
		0, 0,
		descriptor(CODE32, 0, 0xfffff),
		descriptor(DATA, 0, 0xfffff),
		descriptor(TSS32, 0, 0xffff),
	};
	struct kvm_sregs sregs;
	struct kvm_regs regs = { .rip = LOAD_ADDR, .rsp = BOOT_STACK_TOP, .rflags = 2 };
	struct kvm_fpu fpu;

	memcpy(ram + BOOT_GDT, gdt, sizeof(gdt));
	memset(ram + BOOT_IDT, 0, 8);

	IOCTL(vcpu, KVM_GET_SREGS, &sregs);
	sregs.cs = segment(0x10, CODE32, 0xfffff);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = segment(0x18, DATA, 0xfffff);
	sregs.tr = segment(0x20, TSS32, 0xffff);
	sregs.gdt.base = BOOT_GDT;
	sregs.gdt.limit = sizeof(gdt) - 1;
	sregs.idt.base = BOOT_IDT;
	sregs.idt.limit = 0;
	sregs.cr0 = 1 | 1 << 4;		/* PE | ET */
	IOCTL(vcpu, KVM_SET_SREGS, &sregs);
	IOCTL(vcpu, KVM_SET_REGS, &regs);

	IOCTL(vcpu, KVM_GET_FPU, &fpu);
	fpu.fcw = 0x37f;
	fpu.mxcsr = 0x1f80;
	IOCTL(vcpu, KVM_SET_FPU, &fpu);
}

/* KVM_GET_SUPPORTED_CPUID, with the APIC ID fields of vCPU 0 (cpuid.vcpu_cpuid). */
static void set_cpuid(int kvm, int vcpu)
{
	struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + MAX_CPUID * sizeof(cpuid->entries[0]));

	if (!cpuid)
		die("calloc");
	cpuid->nent = MAX_CPUID;
	IOCTL(kvm, KVM_GET_SUPPORTED_CPUID, cpuid);
	for (unsigned i = 0; i < cpuid->nent; i++) {
		struct kvm_cpuid_entry2 *entry = &cpuid->entries[i];

		if (entry->function == 0x1)
			entry->ebx &= 0x00ffffff;
		else if (entry->function == 0xb || entry->function == 0x1f)
			entry->edx = 0;
	}
	IOCTL(vcpu, KVM_SET_CPUID2, cpuid);
	free(cpuid);
}

static uint64_t cpu_ns(struct timeval tv)
{
	return (uint64_t)tv.tv_sec * 1000000000 + (uint64_t)tv.tv_usec * 1000;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	int kvm, vm, vcpu, mmap_size;
	uint8_t *ram;
	struct kvm_run *run;
	uint64_t exits = 0, start, elapsed;
	struct rusage before, after;

	if (argc != 2) {
		fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
		return 2;
	}
	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("open /dev/kvm");
	vm = IOCTL(kvm, KVM_CREATE_VM, 0);
	IOCTL(vm, KVM_SET_TSS_ADDR, TSS_ADDR);
	uint64_t identity_map = IDENTITY_MAP;
	IOCTL(vm, KVM_SET_IDENTITY_MAP_ADDR, &identity_map);
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	IOCTL(vm, KVM_CREATE_IRQCHIP, 0);	/* as pyvmm's Machine */
	IOCTL(vm, KVM_CREATE_PIT2, &pit);

	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap guest RAM");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE,
		.userspace_addr = (uintptr_t)ram,
	};
	IOCTL(vm, KVM_SET_USER_MEMORY_REGION, &region);
	load_image(argv[1], ram);

	vcpu = IOCTL(vm, KVM_CREATE_VCPU, 0);
	mmap_size = IOCTL(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");
	set_cpuid(kvm, vcpu);
	enter_protected(vcpu, ram);

	getrusage(RUSAGE_SELF, &before);
	start = now_ns();
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN");
		}
		exits++;
		if (run->exit_reason != KVM_EXIT_IO) {
			errno = 0;
			die("unexpected exit reason %u after %llu exits",
			    run->exit_reason, (unsigned long long)exits);
		}
		if (run->io.port == DEBUG_EXIT_PORT)
			break;
		/* The benchmark's port: nothing to do. */
	}
	elapsed = now_ns() - start;
	getrusage(RUSAGE_SELF, &after);

	printf("exits=%llu ns=%llu ns_per_exit=%.1f user_ns=%llu sys_ns=%llu\n",
	       (unsigned long long)exits, (unsigned long long)elapsed, (double)elapsed / exits,
	       (unsigned long long)(cpu_ns(after.ru_utime) - cpu_ns(before.ru_utime)),
	       (unsigned long long)(cpu_ns(after.ru_stime) - cpu_ns(before.ru_stime)));
	return 0;
}
