"""Inputs that are small on the wire and large once trusted (issue 16, items 4 and 5),
built byte by byte so nothing large is ever allocated by the test itself."""
import io
import struct
import tarfile
import zipfile
import zlib


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels, with one tiny (wrong)
    IDAT: Pillow opens it lazily, and decoding it would allocate width*height bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xffffffff)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def tar_gz_of_headers(entries: int, distinct: bool = True) -> bytes:
    """A tar.gz of ``entries`` empty-file headers (distinct names compress ~40-fold, equal
    ones ~1000-fold): tiny compressed, every header a member to parse."""
    template = tarfile.TarInfo("a/x")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=9) as archive:
        for index in range(entries):
            template.name = "c%d/%08d.png" % (index % 2, index) if distinct else "c0/x.png"
            archive.addfile(template)
    return raw.getvalue()


def zip_declaring_entries(count: int) -> bytes:
    """An empty zip whose end-of-central-directory record declares ``count`` entries
    (zip64 when over 65535): zipfile would try to read them all."""
    eocd_entries = min(count, 0xFFFF)
    zip64 = b""
    if count >= 0xFFFF:
        zip64 = (b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, count, count, 0, 0)
                 + b"PK\x06\x07" + struct.pack("<IQI", 0, 0, 1))
    return zip64 + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, eocd_entries, eocd_entries,
                                                0, 0, 0)


def zip_with_dirs(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            archive.writestr("d%06d/" % index, b"")
    return buffer.getvalue()
