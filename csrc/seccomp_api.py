"""cdef for <seccomp.h>: the libseccomp calls pyvmm.sandbox builds its filters with.

Action and architecture values are the header's own macros, evaluated at
build time; enum values are left to the compiler (`...`).
"""

INCLUDES = """
#include <seccomp.h>
"""

TYPES = """
typedef void *scmp_filter_ctx;
typedef uint64_t scmp_datum_t;

enum scmp_compare {
    SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_GT,
    SCMP_CMP_MASKED_EQ, ...
};

enum scmp_filter_attr {
    SCMP_FLTATR_ACT_DEFAULT, SCMP_FLTATR_ACT_BADARCH, SCMP_FLTATR_CTL_NNP,
    SCMP_FLTATR_CTL_OPTIMIZE, ...
};

struct scmp_arg_cmp {
    unsigned int arg;
    enum scmp_compare op;
    scmp_datum_t datum_a;
    scmp_datum_t datum_b;
};

struct scmp_version {
    unsigned int major;
    unsigned int minor;
    unsigned int micro;
};

#define SCMP_ARCH_NATIVE ...
#define SCMP_ACT_ALLOW ...
#define SCMP_ACT_TRAP ...
#define SCMP_ACT_NOTIFY ...
#define SCMP_ACT_LOG ...
"""

FUNCTIONS = """
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_attr_set(scmp_filter_ctx ctx, enum scmp_filter_attr attr, uint32_t value);
int seccomp_syscall_priority(scmp_filter_ctx ctx, int syscall, uint8_t priority);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                           unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
int seccomp_syscall_resolve_name(const char *name);
char *seccomp_syscall_resolve_num_arch(uint32_t arch_token, int num);
const struct scmp_version *seccomp_version(void);
unsigned int seccomp_api_get(void);
void free(void *ptr);
"""
