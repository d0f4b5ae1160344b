"""The hostile-input corpus: archives, images and layouts an attacker (or an unlucky user)
uploads, built in code so every case is readable here. Each case is (name, archive bytes,
file name, expectation): "refused" (4xx, nothing stored), "rejected" (201, the named file
listed as rejected, the rest kept) or "accepted" (201, every image kept)."""
import io
import tarfile
import zipfile

from bounded_inputs import tar_gz_of_headers
from PIL import Image

ESCAPE_NAME = "escaped-by-upload.png"  # no case may create this outside the data dir


def png(rgb=(200, 30, 30), size=(16, 16), mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size, rgb if mode == "RGB" else 1).save(buffer, "PNG")
    return buffer.getvalue()


def image(mode, fmt, size=(16, 16), **save):
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, fmt, **save)
    return buffer.getvalue()


def gif_animated():
    frames = [Image.new("P", (16, 16), color) for color in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def merge(*parts):
    merged = {}
    for part in parts:
        merged.update(part)
    return merged


def base_files():
    return merge({"red/%d.png" % i: png((200, 20 + i, 20)) for i in range(3)},
                 {"blue/%d.png" % i: png((20, 20 + i, 200)) for i in range(3)})


def zip_of(files, symlinks=()):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symlink's mode
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def tar_of(files, special=None, compress=""):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:" + compress) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if special is not None:
            info = tarfile.TarInfo("red/special.png")
            info.type = special
            info.linkname = "/etc/passwd"
            archive.addfile(info)
    return buffer.getvalue()


def zip_bomb():
    files = base_files()
    files["red/bomb.png"] = b"\0" * (64 << 20)  # 64 MiB of zeros, ~64 KiB compressed
    return zip_of(files)


def zip_patched(files, name, **fields):
    """A zip whose member ``name`` has its central-directory ``fields`` altered: lying sizes,
    a wrong CRC, the encryption flag, an unknown compression method."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
            if member == name:
                for field, value in fields.items():
                    setattr(archive.filelist[-1], field, value)
    return buffer.getvalue()


def hostile_zips():
    files = dict(base_files(), **{"red/big.png": png(size=(40, 40))})
    yield "zip name over 255 bytes", zip_of(dict(files, **{"red/" + "n" * 300 + ".png": png()})), \
        "a.zip", "refused"
    yield "zip lying size", zip_patched(files, "red/big.png", file_size=12), "a.zip", "refused"
    yield "zip bad crc", zip_patched(files, "red/big.png", CRC=1), "a.zip", "refused"
    yield "zip encrypted member", zip_patched(files, "red/big.png", flag_bits=0x1), "a.zip", \
        "refused"
    yield "zip unknown compression", zip_patched(files, "red/big.png", compress_type=99), \
        "a.zip", "refused"
    yield "class name with bidi override", zip_of(dict(files, **{"gnp.\u202eevil/0.png": png()})), \
        "a.zip", "refused"
    yield "class name with escape", zip_of(dict(files, **{"re\x1b[2Jd/0.png": png()})), "a.zip", \
        "refused"
    yield "tar.gz of headers", tar_gz_of_headers(3000), "a.tar.gz", "refused"


def archives():
    yield from hostile_zips()
    files = base_files()
    yield "zip-slip", zip_of(dict(files, **{"../../" + ESCAPE_NAME: png()})), "a.zip", "refused"
    yield "absolute path", zip_of(dict(files, **{"/tmp/" + ESCAPE_NAME: png()})), "a.zip", \
        "refused"
    yield "zip symlink", zip_of(files, symlinks=["red/link.png"]), "a.zip", "refused"
    for kind, code in (("tar symlink", tarfile.SYMTYPE), ("tar hardlink", tarfile.LNKTYPE),
                       ("tar char device", tarfile.CHRTYPE), ("tar fifo", tarfile.FIFOTYPE)):
        yield kind, tar_of(files, special=code), "a.tar", "refused"
    yield "zip bomb", zip_bomb(), "a.zip", "refused"
    yield "nested archive only", zip_of({"red/inner.zip": zip_of(files),
                                         "blue/inner.tar": tar_of(files)}), "a.zip", "refused"
    yield "truncated zip", zip_of(files)[:300], "a.zip", "refused"
    yield "truncated tar.gz", tar_of(files, compress="gz")[:200], "a.tar.gz", "refused"
    yield "text named .zip", b"hello, this is not an archive\n" * 10, "a.zip", "refused"
    yield "tar named .zip (content decides)", tar_of(files), "a.zip", "accepted"
    yield "too many files", zip_of({"c%d/%d.png" % (i % 2, i): b"x" for i in range(2000)}), \
        "a.zip", "refused"


def images():
    files = base_files()
    yield "corrupt png", zip_of(dict(files, **{"red/bad.png": png()[:40]})), "a.zip", \
        "rejected:red/bad.png"
    yield "corrupt jpeg", zip_of(dict(files, **{"red/bad.jpg": image("RGB", "JPEG")[:60]})), \
        "a.zip", "rejected:red/bad.jpg"
    yield "decompression bomb", zip_of(dict(files, **{
        "red/huge.png": image("1", "PNG", size=(20000, 20000))})), "a.zip", \
        "rejected:red/huge.png"
    yield "text named .jpg", zip_of(dict(files, **{"red/notes.jpg": b"just some text"})), \
        "a.zip", "rejected:red/notes.jpg"
    odd = {"red/one-pixel.png": png(size=(1, 1)), "red/cmyk.jpg": image("CMYK", "JPEG"),
           "red/palette.png": image("P", "PNG"), "red/sixteen.png": image("I;16", "PNG"),
           "blue/alpha.png": image("RGBA", "PNG"), "blue/animated.gif": gif_animated()}
    yield "odd but valid images", zip_of(dict(files, **odd)), "a.zip", "accepted"


def layouts():
    files = base_files()
    yield "one class", zip_of({k: v for k, v in files.items() if k.startswith("red/")}), \
        "a.zip", "refused"
    yield "empty class dir", zip_of(dict({k: v for k, v in files.items()
                                          if k.startswith("red/")}, **{"blue/": b""})), \
        "a.zip", "refused"
    yield "class only in val", zip_of(dict({"train/" + k: v for k, v in files.items()},
                                           **{"val/green/0.png": png()})), "a.zip", "refused"
    yield "unicode and spaces", zip_of(merge(
        {"ŝtrawberry jam/%d.png" % i: png() for i in range(3)},
        {"日本 語/%d.png" % i: png((1, 2, 3)) for i in range(3)})), "a.zip", "accepted"
    yield "names differing by case", zip_of(merge(
        {"Cat/%d.png" % i: png() for i in range(3)},
        {"cat/%d.png" % i: png((9, 9, 9)) for i in range(3)})), "a.zip", "accepted"
    yield "a thousand classes", zip_of({"class-%04d/0.png" % i: png((i % 256, i // 256, 0))
                                        for i in range(1000)}), "a.zip", "accepted"
    # issue 14: an image has one label in the working set; the later class's copy is left out
    yield "one image in two classes", zip_of({"a/0.png": png((1, 1, 1)), "b/0.png": png((1, 1, 1)),
                                              "a/1.png": png((2, 2, 2)),
                                              "b/1.png": png((3, 3, 3))}), \
        "a.zip", "rejected:train/b/0.png"


def corpus():
    for group in (archives, images, layouts):
        yield from group()
