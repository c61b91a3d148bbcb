"""ELF executables: PT_LOAD segments at their physical addresses.

ELF64 (x86-64) is entered in long mode at e_entry, ELF32 (i386) in 32-bit
protected mode. Every header field is checked against the file before use.
The parsing helpers here also serve the multiboot and PVH loaders.
"""

import collections
import struct

from ..arch.x86_64 import modes
from .common import GuestWriter, LoaderError

MAGIC = b"\x7fELF"
CLASS32, CLASS64 = 1, 2
LITTLE_ENDIAN = 1
ET_EXEC = 2
EM_386, EM_X86_64 = 3, 62
PT_LOAD, PT_NOTE = 1, 4
SHT_NOTE = 7
PF_X = 1
MAX_PROGRAM_HEADERS = 128
MAX_SECTION_HEADERS = 4096
# Linux's vmlinux has about ten notes in a few hundred bytes.
MAX_NOTES = 256
MAX_NOTE_BYTES = 1 << 20

# (ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags,
#  e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx)
_EHDR = {CLASS32: struct.Struct("<16sHHIIIIIHHHHHH"), CLASS64: struct.Struct("<16sHHIQQQIHHHHHH")}
_PHDR = {CLASS32: struct.Struct("<IIIIIIII"), CLASS64: struct.Struct("<IIQQQQQQ")}
# Section header fields: (name, type, flags, addr, offset, size, link, info, addralign, entsize).
_SHDR = {CLASS32: struct.Struct("<IIIIIIIIII"), CLASS64: struct.Struct("<IIQQQQIIQQ")}
_NHDR = struct.Struct("<III")  # namesz, descsz, type: 32-bit in ELF32 and ELF64 alike
_MACHINE = {CLASS32: EM_386, CLASS64: EM_X86_64}

Header = collections.namedtuple(
    "Header", "elf_class e_type machine entry phoff shoff phentsize phnum shentsize shnum")
ProgramHeader = collections.namedtuple(
    "ProgramHeader", "type offset vaddr paddr filesz memsz flags align")


def probe(image):
    return image[:4] == MAGIC


def header(image):
    """The ELF header's fields, checked for class and byte order only."""
    if len(image) < 52 or not probe(image):
        raise LoaderError("not an ELF file, or its header is truncated")
    elf_class, data = image[4], image[5]
    if elf_class not in _EHDR:
        raise LoaderError(f"unsupported ELF class {elf_class}")
    if data != LITTLE_ENDIAN:
        raise LoaderError("ELF is not little-endian")
    layout = _EHDR[elf_class]
    if len(image) < layout.size:
        raise LoaderError("ELF header is truncated")
    (_ident, e_type, machine, _version, entry, phoff, shoff, _flags, _ehsize,
     phentsize, phnum, shentsize, shnum, _shstrndx) = layout.unpack_from(image)
    return Header(elf_class, e_type, machine, entry, phoff, shoff, phentsize, phnum,
                  shentsize, shnum)


def program_header_table(image, elf_class, phoff, phentsize, phnum):
    """[ProgramHeader] for every entry of the program header table."""
    layout = _PHDR[elf_class]
    if phnum > MAX_PROGRAM_HEADERS:
        raise LoaderError(f"ELF has {phnum} program headers (at most {MAX_PROGRAM_HEADERS})")
    if phentsize < layout.size:
        raise LoaderError(f"ELF program header size {phentsize} is too small")
    if phoff + phnum * phentsize > len(image):
        raise LoaderError("ELF program headers run past the end of the file")
    table = []
    for i in range(phnum):
        fields = layout.unpack_from(image, phoff + i * phentsize)
        if elf_class == CLASS64:
            p_type, flags, offset, vaddr, paddr, filesz, memsz, align = fields
        else:
            p_type, offset, vaddr, paddr, filesz, memsz, flags, align = fields
        table.append(ProgramHeader(p_type, offset, vaddr, paddr, filesz, memsz, flags, align))
    return table


def load_segments(image):
    """(class, entry, [ProgramHeader of each PT_LOAD]) of an x86 executable, or LoaderError."""
    hdr = header(image)
    if hdr.machine != _MACHINE[hdr.elf_class]:
        raise LoaderError(f"ELF machine {hdr.machine} is not x86 "
                          f"(expected {_MACHINE[hdr.elf_class]} for this ELF class)")
    if hdr.e_type != ET_EXEC:
        raise LoaderError(f"ELF type {hdr.e_type} is not an executable (ET_EXEC)")
    segments = []
    for ph in program_header_table(image, hdr.elf_class, hdr.phoff, hdr.phentsize, hdr.phnum):
        if ph.type != PT_LOAD:
            continue
        if ph.offset + ph.filesz > len(image):
            raise LoaderError(f"ELF segment at file offset {ph.offset:#x} runs past the end of the file")
        if ph.filesz > ph.memsz:
            raise LoaderError(f"ELF segment at {ph.paddr:#x} has filesz > memsz")
        segments.append(ph)
    if not segments:
        raise LoaderError("ELF has no loadable segment")
    return hdr.elf_class, hdr.entry, segments


def parse(image):
    """(class, entry, [(offset, paddr, filesz, memsz)] of PT_LOAD) or LoaderError."""
    elf_class, entry, segments = load_segments(image)
    return elf_class, entry, [(ph.offset, ph.paddr, ph.filesz, ph.memsz) for ph in segments]


def notes(image):
    """[(name, type, desc)] of the ELF notes (see iter_notes)."""
    return list(iter_notes(image))


def iter_notes(image):
    """Yields (name, type, desc) of each ELF note: from the PT_NOTE segments,
    or, when there are none, from the SHT_NOTE sections. Names lose their NULs.

    Reading is lazy (a caller looking for one note stops there) and bounded:
    more than MAX_NOTES notes, or note areas of more than MAX_NOTE_BYTES bytes
    in all (many sections may describe one area), are a LoaderError.
    """
    hdr = header(image)
    regions = [(ph.offset, ph.filesz, ph.align)
               for ph in program_header_table(image, hdr.elf_class, hdr.phoff, hdr.phentsize,
                                              hdr.phnum)
               if ph.type == PT_NOTE]
    if not regions:
        regions = _note_sections(image, hdr)
    count = area_bytes = 0
    for offset, size, align in regions:
        if offset + size > len(image):
            raise LoaderError(f"ELF note area at file offset {offset:#x} runs past "
                              f"the end of the file")
        area_bytes += size
        if area_bytes > MAX_NOTE_BYTES:
            raise LoaderError(f"ELF has note areas of more than {MAX_NOTE_BYTES} bytes in all")
        for found in _parse_notes(image, offset, size, align):
            count += 1
            if count > MAX_NOTES:
                raise LoaderError(f"ELF has more than {MAX_NOTES} notes")
            yield found


def _note_sections(image, hdr):
    if hdr.shoff == 0 or hdr.shnum == 0:
        return []
    layout = _SHDR[hdr.elf_class]
    if hdr.shnum > MAX_SECTION_HEADERS:
        raise LoaderError(f"ELF has {hdr.shnum} section headers (at most {MAX_SECTION_HEADERS})")
    if hdr.shentsize < layout.size:
        raise LoaderError(f"ELF section header size {hdr.shentsize} is too small")
    if hdr.shoff + hdr.shnum * hdr.shentsize > len(image):
        raise LoaderError("ELF section headers run past the end of the file")
    regions = []
    for i in range(hdr.shnum):
        (_name, sh_type, _flags, _addr, offset, size, _link, _info, align,
         _entsize) = layout.unpack_from(image, hdr.shoff + i * hdr.shentsize)
        if sh_type == SHT_NOTE:
            regions.append((offset, size, align))
    return regions


def _parse_notes(image, start, size, align):
    # Notes are 4-byte aligned in practice; an area aligned to 8 uses 8 (as readelf does).
    align = 8 if align == 8 else 4
    end = start + size
    position = start
    while end - position >= _NHDR.size:
        namesz, descsz, note_type = _NHDR.unpack_from(image, position)
        name_at = position + _NHDR.size
        desc_at = name_at + _round_up(namesz, align)
        next_at = desc_at + _round_up(descsz, align)
        if desc_at + descsz > end:
            raise LoaderError(f"ELF note at file offset {position:#x} runs past its note area")
        yield (bytes(image[name_at:name_at + namesz]).rstrip(b"\0"), note_type,
               bytes(image[desc_at:desc_at + descsz]))
        position = next_at


def _round_up(value, alignment):
    return (value + alignment - 1) // alignment * alignment


def load(image, memory, options):
    elf_class, entry, segments = load_segments(image)
    if entry >= 1 << 32:
        raise LoaderError(f"ELF entry {entry:#x} is above 4 GiB, which pyvmm does not map at entry")
    mode = modes.LONG if elf_class == CLASS64 else modes.PROTECTED
    # Segments go exactly where they say (as they always could); pyvmm's GDT,
    # page tables and stack move out of their way.
    writer = GuestWriter(memory, kernel_over_firmware=True)
    writer.write_kernel(segment_pieces(image, segments))
    tables = writer.place_entry_tables(mode, entry)
    return writer.boot_spec(f"elf{32 if elf_class == CLASS32 else 64}", mode, entry,
                            tables=tables)


def segment_pieces(image, segments):
    """[(paddr, file bytes, memsz)] of PT_LOAD ProgramHeaders, the file bytes
    as views of `image` rather than copies."""
    view = memoryview(image)
    return [(ph.paddr, view[ph.offset:ph.offset + ph.filesz], ph.memsz) for ph in segments]
