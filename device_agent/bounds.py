"""Decode limits shared by the API and the worker (stdlib and Pillow; Python 3.6 syntax).

An image's header says how many pixels decoding it will allocate; a 10 KB PNG can declare
9000x9000 (about 700 MB once decoded). :func:`check_image_header` opens only the header
(Pillow's ``Image.open`` is lazy) and refuses an image over the limit before ``load()``;
:func:`read_images` reads a predict request's images within one byte budget and checks each.
"""
import io
from typing import BinaryIO, Iterable, List

from device_agent.errors import ImageTooLarge, InvalidInput, PayloadTooLarge

DEFAULT_MAX_PIXELS = 40000000  # e.g. 8000 x 5000, the upload limit's default


def check_image_header(blob: bytes, max_pixels: int, what: str = "image") -> None:
    """InvalidInput when ``blob`` is no image Pillow knows, ImageTooLarge when its header
    declares more than ``max_pixels`` pixels. Decodes nothing."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("%s is over the pixel limit" % what) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InvalidInput("%s is not a readable image (%s)" % (what, detail)) from exc
    if width * height > max_pixels:
        raise ImageTooLarge("%s of %dx%d pixels is over the %d-pixel limit"
                            % (what, width, height, max_pixels))


def read_images(streams: Iterable[BinaryIO], budget: int, max_pixels: int) -> List[bytes]:
    """Each image's bytes, read within one budget for all of them (never more than the
    budget plus one byte is held), and each image's declared size checked from its header
    before anything decodes it (the worker checks again)."""
    images, left = [], budget
    for index, stream in enumerate(streams):
        blob = stream.read(left + 1)
        left -= len(blob)
        if left < 0:
            raise PayloadTooLarge("the images are over the %d-byte predict limit" % budget)
        check_image_header(blob, max_pixels, "image %d" % index)
        images.append(blob)
    return images
