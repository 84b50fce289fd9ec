"""The dynamic symbols of an ELF file (pyelftools): which C API a binary exports.

Attach calls only exported functions of CPython, so the dynamic symbol table is all it
reads; a stripped interpreter (no debug information, no ``.symtab``) still has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import LivepatchError

#: bytes of each function's start kept, to check that the file is what is running
CODE_BYTES = 16


@dataclass(frozen=True)
class Symbols:
    """The defined dynamic symbols of one file that attach looks for."""

    path: str
    shared: bool  # ET_DYN (a library or a PIE executable): addresses move by a load bias
    first_vaddr: int  # the lowest PT_LOAD address, page-aligned (the bias's reference)
    values: dict[str, int]  # symbol -> address in the file's own address space
    code: dict[str, bytes]  # symbol -> the first bytes of its code in the file
    py_version: int | None  # the value of ``Py_Version`` (3.11+), e.g. 0x030B07F0

    @property
    def defined(self) -> frozenset[str]:
        return frozenset(self.values)

    def bias(self, mapped_at: int, mapped_offset: int) -> int:
        """The load bias, from where the file's first mapping (file offset
        ``mapped_offset``) sits in the process."""
        if not self.shared:
            return 0
        return mapped_at - mapped_offset - self.first_vaddr


def read(path: str, wanted: frozenset[str]) -> Symbols:
    """Which of ``wanted`` ``path`` defines, and ``Py_Version``'s value if it has one.

    Raises OSError if the file cannot be read, ValueError if it is not ELF.
    """
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
    except ImportError:
        raise LivepatchError(
            "not-found",
            "attach reads ELF symbols with pyelftools, which is not installed: "
            "pip install 'pylivepatch[cli]'",
        ) from None
    with open(path, "rb") as fh:
        try:
            elf = ELFFile(fh)
            dynsym: Any = elf.get_section_by_name(".dynsym")
            values: dict[str, int] = {}
            if dynsym is not None:
                for sym in dynsym.iter_symbols():
                    if sym["st_shndx"] != "SHN_UNDEF" and sym.name in wanted:
                        values[sym.name] = int(sym["st_value"])
            loads = [
                (int(seg["p_vaddr"]), int(seg["p_filesz"]), int(seg["p_offset"]))
                for seg in elf.iter_segments()
                if seg["p_type"] == "PT_LOAD"
            ]

            def at(vaddr: int, n: int) -> bytes:
                for start, size, offset in loads:
                    if start <= vaddr < start + size:
                        fh.seek(offset + vaddr - start)
                        return fh.read(n)
                return b""

            version = at(values["Py_Version"], 4) if "Py_Version" in values else b""
            code = {
                name: at(value, CODE_BYTES)
                for name, value in values.items()
                if name != "Py_Version"
            }
            shared = elf.header["e_type"] == "ET_DYN"
            first = min((start for start, _, _ in loads), default=0) & ~0xFFF
        except ELFError as exc:
            raise ValueError(f"{path} is not an ELF file: {exc}") from None
    return Symbols(
        path=path,
        shared=shared,
        first_vaddr=first,
        values=values,
        code=code,
        py_version=int.from_bytes(version, "little") if len(version) == 4 else None,
    )
