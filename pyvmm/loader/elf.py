"""ELF executables: PT_LOAD segments at their physical addresses.

ELF64 (x86-64) is entered in long mode at e_entry, ELF32 (i386) in 32-bit
protected mode. Every header field is checked against the file before use.
"""

import struct

from ..arch.x86_64 import modes
from .common import BootSpec, LoaderError, place

MAGIC = b"\x7fELF"
CLASS32, CLASS64 = 1, 2
LITTLE_ENDIAN = 1
ET_EXEC = 2
EM_386, EM_X86_64 = 3, 62
PT_LOAD = 1
MAX_PROGRAM_HEADERS = 128

# (ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags,
#  e_ehsize, e_phentsize, e_phnum, ...)
_EHDR = {CLASS32: struct.Struct("<16sHHIIIIIHHHHHH"), CLASS64: struct.Struct("<16sHHIQQQIHHHHHH")}
# Program header fields, normalised to (type, offset, paddr, filesz, memsz).
_PHDR = {CLASS32: struct.Struct("<IIIIIIII"), CLASS64: struct.Struct("<IIQQQQQQ")}
_MACHINE = {CLASS32: EM_386, CLASS64: EM_X86_64}


def probe(image):
    return image[:4] == MAGIC


def program_headers(image, elf_class, phoff, phentsize, phnum):
    """Yields (type, offset, paddr, filesz, memsz) for each program header."""
    layout = _PHDR[elf_class]
    if phnum > MAX_PROGRAM_HEADERS:
        raise LoaderError(f"ELF has {phnum} program headers (at most {MAX_PROGRAM_HEADERS})")
    if phentsize < layout.size:
        raise LoaderError(f"ELF program header size {phentsize} is too small")
    if phoff + phnum * phentsize > len(image):
        raise LoaderError("ELF program headers run past the end of the file")
    for i in range(phnum):
        fields = layout.unpack_from(image, phoff + i * phentsize)
        if elf_class == CLASS64:
            p_type, _flags, offset, _vaddr, paddr, filesz, memsz, _align = fields
        else:
            p_type, offset, _vaddr, paddr, filesz, memsz, _flags, _align = fields
        yield p_type, offset, paddr, filesz, memsz


def parse(image):
    """(class, entry, [(offset, paddr, filesz, memsz)] of PT_LOAD) or LoaderError."""
    if len(image) < 52 or not probe(image):
        raise LoaderError("not an ELF file, or its header is truncated")
    elf_class, data = image[4], image[5]
    if elf_class not in _EHDR:
        raise LoaderError(f"unsupported ELF class {elf_class}")
    if data != LITTLE_ENDIAN:
        raise LoaderError("ELF is not little-endian")
    header = _EHDR[elf_class]
    if len(image) < header.size:
        raise LoaderError("ELF header is truncated")
    (_ident, e_type, machine, _version, entry, phoff, _shoff, _flags, _ehsize,
     phentsize, phnum, _shentsize, _shnum, _shstrndx) = header.unpack_from(image)
    if machine != _MACHINE[elf_class]:
        raise LoaderError(f"ELF machine {machine} is not x86 "
                          f"(expected {_MACHINE[elf_class]} for this ELF class)")
    if e_type != ET_EXEC:
        raise LoaderError(f"ELF type {e_type} is not an executable (ET_EXEC)")
    segments = []
    for p_type, offset, paddr, filesz, memsz in program_headers(image, elf_class, phoff,
                                                                 phentsize, phnum):
        if p_type != PT_LOAD:
            continue
        if offset + filesz > len(image):
            raise LoaderError(f"ELF segment at file offset {offset:#x} runs past the end of the file")
        if filesz > memsz:
            raise LoaderError(f"ELF segment at {paddr:#x} has filesz > memsz")
        segments.append((offset, paddr, filesz, memsz))
    if not segments:
        raise LoaderError("ELF has no loadable segment")
    return elf_class, entry, segments


def load(image, memory, options):
    elf_class, entry, segments = parse(image)
    loaded = [place(memory, paddr, image[offset:offset + filesz], memsz)
              for offset, paddr, filesz, memsz in segments]
    if entry >= 1 << 32:
        raise LoaderError(f"ELF entry {entry:#x} is above 4 GiB, which pyvmm does not map at entry")
    mode = modes.LONG if elf_class == CLASS64 else modes.PROTECTED
    return BootSpec(format=f"elf{32 if elf_class == CLASS32 else 64}", mode=mode, entry=entry,
                    loaded=loaded)
