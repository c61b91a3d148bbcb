"""cdef for <linux/kvm.h>: the structures and ioctl numbers pyvmm uses.

Struct members are declared with `...;` so the C compiler, not this file,
decides layout and padding; ioctl numbers and constants are `#define X ...`
so they are the header's own macros evaluated at build time.
"""

INCLUDES = """
#include <linux/kvm.h>
"""

TYPES = """
typedef int... __u8;
typedef int... __u16;
typedef int... __u32;
typedef int... __u64;
typedef int... __s32;
typedef int... __s64;

#define KVM_API_VERSION ...

/* ioctls on /dev/kvm */
#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_GET_MSR_INDEX_LIST ...
#define KVM_GET_MSR_FEATURE_INDEX_LIST ...

/* ioctls on a VM */
#define KVM_CREATE_VCPU ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_SET_TSS_ADDR ...
#define KVM_SET_IDENTITY_MAP_ADDR ...
#define KVM_CREATE_IRQCHIP ...
#define KVM_CREATE_PIT2 ...
#define KVM_IRQ_LINE ...
#define KVM_IRQFD ...
#define KVM_IOEVENTFD ...
#define KVM_REGISTER_COALESCED_MMIO ...
#define KVM_UNREGISTER_COALESCED_MMIO ...
#define KVM_ENABLE_CAP ...
#define KVM_GET_IRQCHIP ...
#define KVM_SET_IRQCHIP ...
#define KVM_GET_PIT2 ...
#define KVM_SET_PIT2 ...
#define KVM_GET_CLOCK ...
#define KVM_SET_CLOCK ...
#define KVM_GET_DIRTY_LOG ...

/* ioctls on a vCPU */
#define KVM_RUN ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_GET_FPU ...
#define KVM_SET_FPU ...
#define KVM_GET_MSRS ...
#define KVM_SET_MSRS ...
#define KVM_SET_CPUID2 ...
#define KVM_GET_CPUID2 ...
#define KVM_GET_MP_STATE ...
#define KVM_SET_MP_STATE ...
#define KVM_GET_XCRS ...
#define KVM_SET_XCRS ...
#define KVM_GET_VCPU_EVENTS ...
#define KVM_SET_VCPU_EVENTS ...
#define KVM_GET_DEBUGREGS ...
#define KVM_SET_DEBUGREGS ...
#define KVM_GET_LAPIC ...
#define KVM_SET_LAPIC ...
#define KVM_GET_XSAVE ...
#define KVM_GET_XSAVE2 ...
#define KVM_SET_XSAVE ...
#define KVM_GET_TSC_KHZ ...
#define KVM_SET_GUEST_DEBUG ...
#define KVM_TRANSLATE ...

/* capabilities */
#define KVM_CAP_IRQCHIP ...
#define KVM_CAP_USER_MEMORY ...
#define KVM_CAP_SET_TSS_ADDR ...
#define KVM_CAP_EXT_CPUID ...
#define KVM_CAP_NR_VCPUS ...
#define KVM_CAP_MAX_VCPUS ...
#define KVM_CAP_NR_MEMSLOTS ...
#define KVM_CAP_COALESCED_MMIO ...
#define KVM_CAP_COALESCED_PIO ...
#define KVM_CAP_IRQFD ...
#define KVM_CAP_IRQFD_RESAMPLE ...
#define KVM_CAP_PIT2 ...
#define KVM_CAP_IOEVENTFD ...
#define KVM_CAP_SET_IDENTITY_MAP_ADDR ...
#define KVM_CAP_SYNC_REGS ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_SET_GUEST_DEBUG ...
#define KVM_CAP_XSAVE ...
#define KVM_CAP_XCRS ...
#define KVM_CAP_READONLY_MEM ...
#define KVM_CAP_SPLIT_IRQCHIP ...
#define KVM_CAP_X86_USER_SPACE_MSR ...
#define KVM_CAP_XSAVE2 ...
#define KVM_CAP_DEBUGREGS ...
#define KVM_CAP_VCPU_EVENTS ...
#define KVM_CAP_ADJUST_CLOCK ...
#define KVM_CAP_GET_MSR_FEATURES ...
#define KVM_CAP_GET_TSC_KHZ ...
#define KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 ...

/* exit reasons */
#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_EXCEPTION ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HYPERCALL ...
#define KVM_EXIT_DEBUG ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_IRQ_WINDOW_OPEN ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_SET_TPR ...
#define KVM_EXIT_TPR_ACCESS ...
#define KVM_EXIT_NMI ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_SYSTEM_EVENT ...
#define KVM_EXIT_IOAPIC_EOI ...
#define KVM_EXIT_X86_RDMSR ...
#define KVM_EXIT_X86_WRMSR ...
#define KVM_EXIT_X86_BUS_LOCK ...
#define KVM_EXIT_NOTIFY ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...

#define KVM_INTERNAL_ERROR_EMULATION ...
#define KVM_INTERNAL_ERROR_SIMUL_EX ...
#define KVM_INTERNAL_ERROR_DELIVERY_EV ...
#define KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON ...

#define KVM_SYSTEM_EVENT_SHUTDOWN ...
#define KVM_SYSTEM_EVENT_RESET ...
#define KVM_SYSTEM_EVENT_CRASH ...
#define KVM_SYSTEM_EVENT_WAKEUP ...
#define KVM_SYSTEM_EVENT_SUSPEND ...

#define KVM_MP_STATE_RUNNABLE ...
#define KVM_MP_STATE_UNINITIALIZED ...
#define KVM_MP_STATE_INIT_RECEIVED ...
#define KVM_MP_STATE_HALTED ...
#define KVM_MP_STATE_SIPI_RECEIVED ...
#define KVM_MP_STATE_AP_RESET_HOLD ...
#define KVM_MP_STATE_SUSPENDED ...

#define KVM_VCPUEVENT_VALID_NMI_PENDING ...
#define KVM_VCPUEVENT_VALID_SIPI_VECTOR ...
#define KVM_VCPUEVENT_VALID_SHADOW ...

#define KVM_SYNC_X86_REGS ...
#define KVM_SYNC_X86_SREGS ...
#define KVM_SYNC_X86_EVENTS ...

#define KVM_MEM_READONLY ...
#define KVM_MEM_LOG_DIRTY_PAGES ...
#define KVM_IRQCHIP_PIC_MASTER ...
#define KVM_IRQCHIP_PIC_SLAVE ...
#define KVM_IRQCHIP_IOAPIC ...
#define KVM_IOAPIC_NUM_PINS ...
#define KVM_VCPUEVENT_VALID_SMM ...
#define KVM_PIT_SPEAKER_DUMMY ...
#define KVM_IOEVENTFD_FLAG_PIO ...
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
#define KVM_IOEVENTFD_FLAG_DEASSIGN ...
#define KVM_IRQFD_FLAG_DEASSIGN ...
#define KVM_IRQFD_FLAG_RESAMPLE ...

#define KVM_GUESTDBG_ENABLE ...
#define KVM_GUESTDBG_SINGLESTEP ...
#define KVM_GUESTDBG_USE_SW_BP ...
#define KVM_GUESTDBG_USE_HW_BP ...

struct kvm_userspace_memory_region {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
    ...;
};

struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
    ...;
};

struct kvm_segment {
    __u64 base;
    __u32 limit;
    __u16 selector;
    __u8 type;
    __u8 present, dpl, db, s, l, g, avl;
    __u8 unusable;
    ...;
};

struct kvm_dtable {
    __u64 base;
    __u16 limit;
    ...;
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    __u64 interrupt_bitmap[4];
    ...;
};

struct kvm_fpu {
    __u8 fpr[8][16];
    __u16 fcw;
    __u16 fsw;
    __u8 ftwx;
    __u16 last_opcode;
    __u64 last_ip;
    __u64 last_dp;
    __u8 xmm[16][16];
    __u32 mxcsr;
    ...;
};

struct kvm_msr_entry {
    __u32 index;
    __u64 data;
    ...;
};

struct kvm_msrs {
    __u32 nmsrs;
    struct kvm_msr_entry entries[];
    ...;
};

struct kvm_msr_list {
    __u32 nmsrs;
    __u32 indices[];
    ...;
};

struct kvm_cpuid_entry2 {
    __u32 function;
    __u32 index;
    __u32 flags;
    __u32 eax;
    __u32 ebx;
    __u32 ecx;
    __u32 edx;
    ...;
};

struct kvm_cpuid2 {
    __u32 nent;
    struct kvm_cpuid_entry2 entries[];
    ...;
};

struct kvm_pit_config {
    __u32 flags;
    ...;
};

struct kvm_mp_state {
    __u32 mp_state;
};

struct kvm_xcr {
    __u32 xcr;
    __u64 value;
    ...;
};

struct kvm_xcrs {
    __u32 nr_xcrs;
    __u32 flags;
    struct kvm_xcr xcrs[16];
    ...;
};

struct kvm_lapic_state {
    char regs[1024];
};

/* --- state save and restore ---------------------------------------------- */

struct kvm_vcpu_events {
    struct {
        __u8 injected;
        __u8 nr;
        __u8 has_error_code;
        __u8 pending;
        __u32 error_code;
    } exception;
    struct {
        __u8 injected;
        __u8 nr;
        __u8 soft;
        __u8 shadow;
    } interrupt;
    struct {
        __u8 injected;
        __u8 pending;
        __u8 masked;
        __u8 pad;
    } nmi;
    __u32 sipi_vector;
    __u32 flags;
    struct {
        __u8 smm;
        __u8 pending;
        __u8 smm_inside_nmi;
        __u8 latched_init;
    } smi;
    struct {
        __u8 pending;
    } triple_fault;
    __u8 reserved[26];
    __u8 exception_has_payload;
    __u64 exception_payload;
};

struct kvm_debugregs {
    __u64 db[4];
    __u64 dr6;
    __u64 dr7;
    __u64 flags;
    ...;
};

/* 4096 bytes, or KVM_CAP_XSAVE2's size with KVM_GET_XSAVE2 (a flexible tail) */
struct kvm_xsave {
    __u32 region[1024];
    ...;
};

struct kvm_pic_state {
    __u8 last_irr;
    __u8 irr;
    __u8 imr;
    __u8 isr;
    __u8 priority_add;
    __u8 irq_base;
    __u8 read_reg_select;
    __u8 poll;
    __u8 special_mask;
    __u8 init_state;
    __u8 auto_eoi;
    __u8 rotate_on_auto_eoi;
    __u8 special_fully_nested_mode;
    __u8 init4;
    __u8 elcr;
    __u8 elcr_mask;
};

/* The redirection table (a union of bit fields) follows these fields: it is
 * read as 24 raw u64 by pyvmm/kvm/state.py, which checks the size. */
struct kvm_ioapic_state {
    __u64 base_address;
    __u32 ioregsel;
    __u32 id;
    __u32 irr;
    ...;
};

/* chip: a union of char dummy[512], kvm_pic_state and kvm_ioapic_state,
 * reached through the struct's bytes (pyvmm/kvm/state.py) */
struct kvm_irqchip {
    __u32 chip_id;
    ...;
};

struct kvm_pit_channel_state {
    __u32 count;
    __u16 latched_count;
    __u8 count_latched;
    __u8 status_latched;
    __u8 status;
    __u8 read_state;
    __u8 write_state;
    __u8 write_latch;
    __u8 rw_mode;
    __u8 mode;
    __u8 bcd;
    __u8 gate;
    __s64 count_load_time;
    ...;
};

struct kvm_pit_state2 {
    struct kvm_pit_channel_state channels[3];
    __u32 flags;
    ...;
};

struct kvm_clock_data {
    __u64 clock;
    __u32 flags;
    ...;
};

struct kvm_dirty_log {
    __u32 slot;
    void *dirty_bitmap;
    ...;
};

struct kvm_irq_level {
    __u32 irq;
    __u32 level;
    ...;
};

struct kvm_irqfd {
    __u32 fd;
    __u32 gsi;
    __u32 flags;
    __u32 resamplefd;
    ...;
};

struct kvm_ioeventfd {
    __u64 datamatch;
    __u64 addr;
    __u32 len;
    __s32 fd;
    __u32 flags;
    ...;
};

struct kvm_coalesced_mmio_zone {
    __u64 addr;
    __u32 size;
    __u32 pio;
    ...;
};

struct kvm_coalesced_mmio {
    __u64 phys_addr;
    __u32 len;
    __u32 pio;
    __u8 data[8];
    ...;
};

struct kvm_coalesced_mmio_ring {
    __u32 first, last;
    struct kvm_coalesced_mmio coalesced_mmio[];
    ...;
};

struct kvm_enable_cap {
    __u32 cap;
    __u32 flags;
    __u64 args[4];
    ...;
};

struct kvm_translation {
    __u64 linear_address;
    __u64 physical_address;
    __u8 valid;
    __u8 writeable;
    __u8 usermode;
    ...;
};

struct kvm_debug_exit_arch {
    __u32 exception;
    __u32 pad;
    __u64 pc;
    __u64 dr6;
    __u64 dr7;
};

struct kvm_guest_debug_arch {
    __u64 debugreg[8];
};

struct kvm_guest_debug {
    __u32 control;
    struct kvm_guest_debug_arch arch;
    ...;
};

struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;
    __u64 cr8;
    __u64 apic_base;
    /* anonymous members cannot be partial: these mirror the header exactly */
    union {
        struct { __u64 hardware_exit_reason; } hw;
        struct { __u64 hardware_entry_failure_reason; __u32 cpu; } fail_entry;
        struct { __u32 exception; __u32 error_code; } ex;
        struct {
            __u8 direction;
            __u8 size;
            __u16 port;
            __u32 count;
            __u64 data_offset;
        } io;
        struct { struct kvm_debug_exit_arch arch; } debug;
        struct {
            __u64 phys_addr;
            __u8 data[8];
            __u32 len;
            __u8 is_write;
        } mmio;
        struct {
            __u32 suberror;
            __u32 ndata;
            __u64 data[16];
        } internal;
        struct {
            __u32 type;
            __u32 ndata;
            __u64 data[16];
        } system_event;
        struct {
            __u8 error;
            __u8 pad[7];
            __u32 reason;
            __u32 index;
            __u64 data;
        } msr;
        char padding[256];
    };
    __u64 kvm_valid_regs;
    __u64 kvm_dirty_regs;
    ...;
};
"""
