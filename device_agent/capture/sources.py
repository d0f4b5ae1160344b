"""Which capture sources may be opened: an allowlist, checked before anything is opened.

A source arrives as text from an HTTP request, and OpenCV hands text to FFmpeg (which picks
a protocol from the text: ``file:``, ``http:``, ``concat:``, ...) or to GStreamer (whose
``!`` chains arbitrary elements, ``filesrc location=/etc/passwd`` among them). So nothing the
caller wrote reaches either of them except through one of four shapes:

- ``/dev/videoN``: a V4L2 camera, opened by its index N (the text is not passed on);
- ``csi://N``: a MIPI CSI camera on a Jetson, through a GStreamer pipeline built here from
  the integer N alone;
- ``rtsp://[user[:password]@]host[:port][/path][?query]``: a network camera, characters
  from a strict set (no spaces, quotes, ``!``, ``&``, ``;``, ``|``, ``$``, backquotes),
  opened with OpenCV's FFmpeg backend, never through a GStreamer pipeline;
- ``name.avi`` or ``dir/name.mp4``: a video file RELATIVE to the ``videos/`` folder of the
  daemon's data dir, resolved with realpath and refused when it lands outside that folder
  (``..``, absolute paths, symlinks that escape, any ``scheme:``).

Stdlib only: parsing never imports OpenCV.
"""
import os
import re
from typing import NamedTuple, Union

from device_agent.errors import InvalidInput, UnknownName

MAX_SOURCE_CHARS = 512
MAX_V4L2_INDEX = 63  # the kernel numbers V4L2 nodes video0..video63 by default
MAX_CSI_SENSOR = 15  # nvarguscamerasrc's sensor-id; AGX Orin carriers take up to 16 streams
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mjpeg", ".mjpg")
ALLOWED = ("/dev/videoN, csi://N, rtsp://host[:port]/path, or a video file's path relative "
           "to the data dir's videos/ folder")

V4L2 = re.compile(r"/dev/video(0|[1-9][0-9]?)")
CSI = re.compile(r"csi://(0|[1-9][0-9]?)")
# RFC 3986's unreserved characters and percent-escapes, minus everything a shell or a
# GStreamer launch line gives a meaning to; '&' is refused too (so a query has one pair).
_SAFE = r"[A-Za-z0-9._~%-]"
RTSP = re.compile(
    r"rtsp://"
    r"(?:(?P<user>" + _SAFE + r"+)(?::(?P<password>" + _SAFE + r"*))?@)?"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~%=+,:/-]*)?"
    r"(?:\?(?P<query>[A-Za-z0-9._~%=+,-]*))?")
# Each part of a video's relative path starts with a letter, digit or '_' (so no hidden
# names, no '.' or '..') and holds no '%' (FFmpeg's image2 reads 'img%03d.jpg' as a pattern).
VIDEO_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}(?:/[A-Za-z0-9_][A-Za-z0-9._-]{0,127})*")
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

# The pipeline JetsonHacks' CSI-Camera examples and jetson-inference's camera docs use: the
# Argus camera source in NVMM memory, nvvidconv out to system memory as BGRx, videoconvert to
# the BGR OpenCV wants; 1280x720 at 30 fps is a mode of the common IMX219 and IMX477
# sensors. appsink keeps only the newest buffer, so a slow reader gets a fresh frame.
# https://github.com/JetsonHacksNano/CSI-Camera (simple_camera.py)
# https://github.com/dusty-nv/jetson-inference/blob/master/docs/aux-streaming.md#mipi-csi-cameras
CSI_PIPELINE = ("nvarguscamerasrc sensor-id=%d ! "
                "video/x-raw(memory:NVMM), width=1280, height=720, framerate=30/1, "
                "format=NV12 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
                "video/x-raw, format=BGR ! appsink drop=1 max-buffers=1")


class Source(NamedTuple):
    """A source that passed the allowlist: what OpenCV opens and how."""

    kind: str                 # "v4l2", "csi", "rtsp" or "file"
    target: Union[int, str]   # the V4L2 index, the GStreamer pipeline, the URL or the real path
    backend: str              # OpenCV's backend, cv2.CAP_<backend>: V4L2, GSTREAMER, FFMPEG
    shown: str                # how the API shows it (an RTSP password hidden)

    @property
    def live(self) -> bool:
        """A camera (frames keep coming, timed by the clock), not a file (timed by its own
        frame rate)."""
        return self.kind != "file"


def parse_source(text: object, videos_dir: str) -> Source:
    """The typed source ``text`` names, or InvalidInput (400) saying what is allowed;
    UnknownName (404) for a well-formed video path with no file behind it."""
    if not isinstance(text, str) or not text:
        raise InvalidInput("a capture source is required: " + ALLOWED)
    if len(text) > MAX_SOURCE_CHARS or not all(" " <= char <= "~" for char in text):
        raise InvalidInput("a capture source is at most %d printable ASCII characters"
                           % MAX_SOURCE_CHARS)
    if text.startswith("/dev/"):
        return _v4l2(text)
    if text.startswith("csi://"):
        return _csi(text)
    if text.startswith("rtsp://"):
        return _rtsp(text)
    if SCHEME.match(text):
        raise InvalidInput("source scheme %r is not allowed; allowed: %s"
                           % (text.split(":", 1)[0][:16], ALLOWED))
    return _video_file(text, videos_dir)


def _v4l2(text: str) -> Source:
    match = V4L2.fullmatch(text)
    if not match or int(match.group(1)) > MAX_V4L2_INDEX:
        raise InvalidInput("the only devices allowed are /dev/video0../dev/video%d"
                           % MAX_V4L2_INDEX)
    return Source("v4l2", int(match.group(1)), "V4L2", text)


def check_present(source: Source) -> None:
    """UnknownName (404) for a V4L2 camera whose device node is not there, before a capture
    starts (a stat, not an open). A CSI camera is known only to the Argus daemon, an RTSP one
    only to the network: those say so when their capture opens them."""
    if source.kind == "v4l2" and not os.path.exists("/dev/video%d" % source.target):
        raise UnknownName("no camera at /dev/video%d (ls /dev/video*)" % source.target)


def _csi(text: str) -> Source:
    match = CSI.fullmatch(text)
    if not match or int(match.group(1)) > MAX_CSI_SENSOR:
        raise InvalidInput("a CSI camera is csi://N, N a sensor id 0-%d" % MAX_CSI_SENSOR)
    sensor = int(match.group(1))
    return Source("csi", CSI_PIPELINE % sensor, "GSTREAMER", "csi://%d" % sensor)


def _rtsp(text: str) -> Source:
    match = RTSP.fullmatch(text)
    if not match:
        raise InvalidInput("an RTSP source is rtsp://[user[:password]@]host[:port][/path]"
                           "[?query] of letters, digits and ._~%-=+,:/ (no spaces, quotes, "
                           "'!', '&' or shell characters)")
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise InvalidInput("an RTSP port is 1-65535")
    shown = text
    if match.group("password") is not None:
        start, end = match.span("password")
        shown = text[:start] + "***" + text[end:]
    return Source("rtsp", text, "FFMPEG", shown)


def _video_file(text: str, videos_dir: str) -> Source:
    if text.startswith("/") or "\\" in text:
        raise InvalidInput("a video is named by its path relative to the data dir's videos/ "
                           "folder, not an absolute path; allowed: " + ALLOWED)
    if not VIDEO_PATH.fullmatch(text) or ".." in text.split("/"):
        raise InvalidInput("a video path is parts of letters, digits and ._- (each starting "
                           "with a letter, digit or '_') joined by '/'; allowed: " + ALLOWED)
    if not text.lower().endswith(VIDEO_EXTENSIONS):
        raise InvalidInput("a video file ends in one of %s" % ", ".join(VIDEO_EXTENSIONS))
    root = os.path.realpath(videos_dir)
    path = os.path.realpath(os.path.join(root, text))
    # realpath follows every symlink: a link in videos/ that points elsewhere lands outside
    if os.path.commonpath([root, path]) != root or path == root:
        raise InvalidInput("video %r resolves outside the data dir's videos/ folder" % text)
    if not os.path.isfile(path):
        raise UnknownName("no video %r in the data dir's videos/ folder" % text)
    return Source("file", path, "FFMPEG", text)
