"""x86-64: memory layout, descriptor tables, page tables, entry modes, CPUID."""
