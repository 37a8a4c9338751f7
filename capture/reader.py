"""Capture files: pcap (µs and ns) and pcapng (several interfaces and link types), gzip'd too.

Our own reader rather than libpcap's: libpcap refuses pcapng files whose interfaces have
different link types, and reading the records ourselves lets us report exactly how many packets
were good before a file turned out truncated or corrupt (those packets are kept).
"""
from __future__ import annotations

import gzip
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import msgspec

from capture.errors import CaptureFileError
from capture.packet import ParsedPacket
from capture.parser import LINKTYPE_NAMES, parse

try:  # the pcap record loop compiled (run.sh builds it where a C compiler is present)
    from capture._creader import pcap_records as _pcap_compiled
except ImportError:
    _pcap_compiled = None

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D
_MAX_RECORD = 256 * 1024 * 1024


class RawFrame(msgspec.Struct, gc=False):
    """One frame as read (file or live), before parsing: made per packet, so a C-built
    record like :class:`~capture.packet.ParsedPacket` (and untracked by the collector)."""

    ts: float
    data: bytes
    wire_len: int
    linktype: int
    iface: int


@dataclass(slots=True)
class FileInfo:
    path: str
    format: str = ""          # "pcap" | "pcap-nsec" | "pcapng"
    linktypes: tuple[int, ...] = ()
    packets: int = 0
    #: set when the file turned out damaged after some good packets (they were all delivered)
    damage: str = ""


def _load(path: Path) -> bytes | mmap.mmap:
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            if head == b"\x1f\x8b":
                fh.seek(0)
                try:
                    with gzip.open(fh) as gz:
                        return gz.read()
                except (OSError, EOFError) as exc:
                    raise CaptureFileError(f"{path}: damaged gzip data ({exc})") from None
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise CaptureFileError(f"{path}: file is empty, not a capture file")
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise CaptureFileError(f"{path}: no such capture file") from None
    except IsADirectoryError:
        raise CaptureFileError(f"{path}: is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureFileError(f"{path}: permission denied") from None
    except OSError as exc:
        raise CaptureFileError(f"{path}: cannot read ({exc.strerror})") from None


class CaptureFile:
    """Iterate the frames of a capture file in file order.

    Opening validates the header (raising :class:`CaptureFileError`); damage found later stops
    the iteration cleanly and is described in ``info.damage`` with the count of good packets.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._buf = _load(self.path)
        self.info = FileInfo(str(self.path))
        if len(self._buf) < 4:
            raise CaptureFileError(f"{self.path}: too short to be a capture file")
        magic_le = struct.unpack_from("<I", self._buf, 0)[0]
        if magic_le == PCAPNG_SHB:
            self.info.format = "pcapng"
            self._frames = self._pcapng()
        else:
            self._frames = self._pcap_open()
        self.info.linktypes = tuple(self._linktypes)

    # ---- pcap -------------------------------------------------------------------------------
    def _pcap_open(self) -> Iterator[RawFrame]:
        buf = self._buf
        magic = struct.unpack_from("<I", buf, 0)[0]
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            endian = "<"
        else:
            magic = struct.unpack_from(">I", buf, 0)[0]
            if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                raise CaptureFileError(f"{self.path}: not a pcap or pcapng file "
                                       f"(unknown magic 0x{struct.unpack_from('>I', buf, 0)[0]:08x})")
            endian = ">"
        if len(buf) < 24:
            raise CaptureFileError(f"{self.path}: truncated pcap file header")
        major, minor, _tz, _sig, snaplen, network = struct.unpack_from(endian + "HHiIII", buf, 4)
        if (major, minor) not in ((2, 4), (2, 3)):
            raise CaptureFileError(f"{self.path}: unsupported pcap version {major}.{minor}")
        linktype = network & 0x03FFFFFF
        if linktype not in LINKTYPE_NAMES:
            raise CaptureFileError(f"{self.path}: unsupported link type {linktype} "
                                   f"(supported: Ethernet, Linux cooked v1/v2, raw IP, BSD loopback)")
        self._linktypes = [linktype]
        nsec = magic == PCAP_MAGIC_NS
        self.info.format = "pcap-nsec" if nsec else "pcap"
        return self._pcap_records(endian, linktype, 1e-9 if nsec else 1e-6)

    def _pcap_records(self, endian: str, linktype: int, scale: float) -> Iterator[RawFrame]:
        if _pcap_compiled is not None:
            return _pcap_compiled(self._buf, endian == "<", linktype, scale, self.info, RawFrame,
                                  _MAX_RECORD)
        return self._pcap_python(endian, linktype, scale)

    def _pcap_python(self, endian: str, linktype: int, scale: float) -> Iterator[RawFrame]:
        """The record loop (compiled as ``capture/_creader.pyx`` when run.sh could build it)."""
        buf = self._buf
        rec = struct.Struct(endian + "IIII").unpack_from
        off = 24
        end = len(buf)
        info = self.info
        while off < end:
            if end - off < 16:
                info.damage = f"truncated record header after {info.packets} packets"
                return
            sec, frac, incl, orig = rec(buf, off)
            if incl > _MAX_RECORD:
                info.damage = f"corrupt record length {incl} after {info.packets} packets"
                return
            off += 16
            if end - off < incl:
                info.damage = f"truncated packet data after {info.packets} packets"
                return
            data = buf[off:off + incl]
            off += incl
            info.packets += 1
            yield RawFrame(sec + frac * scale, data, orig, linktype, 0)

    # ---- pcapng -----------------------------------------------------------------------------
    def _pcapng(self) -> Iterator[RawFrame]:
        buf = self._buf
        if len(buf) < 28:
            raise CaptureFileError(f"{self.path}: truncated pcapng section header")
        bom = struct.unpack_from("<I", buf, 8)[0]
        if bom == _BOM:
            e = "<"
        elif bom == 0x4D3C2B1A:
            e = ">"
        else:
            raise CaptureFileError(f"{self.path}: corrupt pcapng byte-order magic")
        major = struct.unpack_from(e + "H", buf, 12)[0]
        if major != 1:
            raise CaptureFileError(f"{self.path}: unsupported pcapng version {major}")
        # Link types are known only as IDBs appear; pre-scan the first section's IDBs so that
        # an unsupported link type is reported before any packet is processed.
        self._linktypes = []
        self._prescan_idbs(e)
        return self._pcapng_blocks(e)

    def _prescan_idbs(self, e: str) -> None:
        buf = self._buf
        off = 0
        end = len(buf)
        seen = 0
        while off + 12 <= end and seen < 4096:
            btype, blen = struct.unpack_from(e + "II", buf, off)
            if blen < 12 or off + blen > end:
                break
            if btype == 1 and blen >= 20:
                lt = struct.unpack_from(e + "H", buf, off + 8)[0]
                if lt not in LINKTYPE_NAMES:
                    raise CaptureFileError(f"{self.path}: unsupported link type {lt} on interface "
                                           f"{len(self._linktypes)}")
                self._linktypes.append(lt)
            elif btype in (6, 3, 2):
                seen += 1
            off += blen

    def _pcapng_blocks(self, e: str) -> Iterator[RawFrame]:
        buf = self._buf
        off = 0
        end = len(buf)
        info = self.info
        hdr = struct.Struct(e + "II")
        epb = struct.Struct(e + "IIIII").unpack_from
        ifaces: list[tuple[int, float, float]] = []  # (linktype, scale, offset)
        while off < end:
            if end - off < 12:
                info.damage = f"truncated block after {info.packets} packets"
                return
            btype, blen = hdr.unpack_from(buf, off)
            if btype == PCAPNG_SHB:
                bom = struct.unpack_from("<I", buf, off + 8)[0] if end - off >= 12 else 0
                e = "<" if bom == _BOM else ">"
                hdr = struct.Struct(e + "II")
                epb = struct.Struct(e + "IIIII").unpack_from
                blen = hdr.unpack_from(buf, off)[1]
                ifaces = []
            if blen < 12 or blen % 4 or blen > _MAX_RECORD:
                info.damage = f"corrupt block length {blen} after {info.packets} packets"
                return
            if off + blen > end:
                info.damage = f"truncated block after {info.packets} packets"
                return
            if btype == 6:  # Enhanced Packet Block
                iid, ts_hi, ts_lo, caplen, orig = epb(buf, off + 8)
                if iid >= len(ifaces) or 28 + caplen > blen:
                    info.damage = f"corrupt packet block after {info.packets} packets"
                    return
                lt, scale, toff = ifaces[iid]
                data = buf[off + 28:off + 28 + caplen]
                info.packets += 1
                yield RawFrame(((ts_hi << 32) | ts_lo) * scale + toff, data, orig, lt, iid)
            elif btype == 3:  # Simple Packet Block: no timestamp, caplen from the block
                if not ifaces:
                    info.damage = f"packet before any interface after {info.packets} packets"
                    return
                orig = struct.unpack_from(e + "I", buf, off + 8)[0]
                caplen = min(orig, blen - 16)
                lt = ifaces[0][0]
                info.packets += 1
                yield RawFrame(0.0, buf[off + 12:off + 12 + caplen], orig, lt, 0)
            elif btype == 2:  # obsolete Packet Block
                iid, _drops, ts_hi, ts_lo, caplen, orig = struct.unpack_from(e + "HHIIII", buf, off + 8)
                if iid >= len(ifaces) or 28 + caplen > blen:
                    info.damage = f"corrupt packet block after {info.packets} packets"
                    return
                lt, scale, toff = ifaces[iid]
                info.packets += 1
                yield RawFrame(((ts_hi << 32) | ts_lo) * scale + toff,
                               buf[off + 28:off + 28 + caplen], orig, lt, iid)
            elif btype == 1:  # Interface Description Block
                lt = struct.unpack_from(e + "H", buf, off + 8)[0]
                scale, toff = self._idb_options(buf, off + 16, off + blen - 4, e)
                ifaces.append((lt, scale, toff))
            off += blen

    @staticmethod
    def _idb_options(buf: bytes | mmap.mmap, off: int, end: int, e: str) -> tuple[float, float]:
        scale = 1e-6
        toff = 0.0
        while off + 4 <= end:
            code, olen = struct.unpack_from(e + "HH", buf, off)
            if code == 0:
                break
            val = off + 4
            if code == 9 and olen >= 1:  # if_tsresol
                r = buf[val]
                scale = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
            elif code == 14 and olen >= 8:  # if_tsoffset
                toff = float(struct.unpack_from(e + "q", buf, val)[0])
            off = val + ((olen + 3) & ~3)
        return scale, toff

    def __iter__(self) -> Iterator[RawFrame]:
        return self._frames

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            try:
                self._buf.close()
            except BufferError:
                pass  # frames still reference the map; it is freed with them


def iter_parsed(path: str | Path) -> Iterator[ParsedPacket]:
    """Every frame of a capture file, parsed, in file order (frame N is the N-th item)."""
    cap = CaptureFile(path)
    for f in cap:
        yield parse(f.data, f.linktype, f.ts, f.wire_len, f.iface)
