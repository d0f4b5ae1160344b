"""The working set (issue 14) in the store, without a daemon: the split rule, snapshot ids and
their materialized folders, the limits and label rules of add_samples, dataset warnings."""
import hashlib
import io
import os

import pytest
from PIL import Image

from device_agent.errors import Conflict, ImageTooLarge, InvalidInput, PayloadTooLarge
from device_agent.store import snapshots
from device_agent.store.dataset_stats import NEAR_DUPLICATE_BITS, dataset_stats
from device_agent.store.datasets import Limits
from device_agent.store.db import Store
from device_agent.store.samples import NewSample, difference_hash, split_for
from device_agent.store.snapshots import SnapshotLine


def png(rgb, size=(24, 24), pattern=0):
    """A small PNG; ``pattern`` draws a stripe so that images differ in structure too."""
    image = Image.new("RGB", size, rgb)
    for x in range(pattern % size[0]):
        image.putpixel((x, 0), (255 - rgb[0], 255 - rgb[1], 255 - rgb[2]))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def many(label, count, base):
    return [NewSample(label, png((base, (7 * i) % 256, (13 * i) % 256), pattern=i))
            for i in range(count)]


@pytest.fixture
def store(tmp_path):
    opened = Store(str(tmp_path / "agent.db"))
    yield opened
    opened.close()


def test_the_split_rule_is_the_content_hash_alone_and_near_the_val_share():
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    splits = [split_for(h) for h in hashes]
    assert splits == [split_for(h) for h in hashes]  # a function: the same every time
    share = splits.count("val") / float(len(splits))
    assert 0.18 < share < 0.22, share  # the job contract's default val_fraction is 0.2
    assert {split_for(h, 0.0) for h in hashes} == {"train"}
    assert {split_for(h, 1.0) for h in hashes} == {"val"}


def test_the_snapshot_id_is_the_sorted_lines_and_ignores_order_and_extension():
    lines = [SnapshotLine("train", "a", "1" * 64, ".png"), SnapshotLine("val", "b", "2" * 64,
                                                                         ".jpg")]
    text = "train\ta\t%s\nval\tb\t%s\n" % ("1" * 64, "2" * 64)
    assert snapshots.snapshot_id(lines) == hashlib.sha256(text.encode()).hexdigest()
    assert snapshots.snapshot_id(lines[::-1]) == snapshots.snapshot_id(lines)
    assert snapshots.snapshot_id([lines[0]._replace(ext=".bmp"), lines[1]]) == \
        snapshots.snapshot_id(lines)
    assert snapshots.snapshot_id([lines[0]._replace(split="val"), lines[1]]) != \
        snapshots.snapshot_id(lines)
    assert snapshots.snapshot_id([lines[0]._replace(label="c"), lines[1]]) != \
        snapshots.snapshot_id(lines)


def test_samples_are_stored_once_and_never_move(store, tmp_path):
    first = store.add_samples("cats", many("a", 30, 10) + many("b", 30, 200))
    assert (first.added, first.duplicates, len(first.ids)) == (60, 0, 60)
    placed = {r["hash"]: r["split"] for r in store.working_set("cats")}
    assert placed == {h: split_for(h) for h in first.ids}
    assert set(placed.values()) == {"train", "val"}
    again = store.add_samples("cats", many("a", 40, 10))  # 30 of these are there already
    assert (again.added, again.duplicates) == (10, 30)
    after = {r["hash"]: r["split"] for r in store.working_set("cats")}
    assert {h: after[h] for h in placed} == placed
    for row in store.working_set("cats"):
        path = store.sample_path("cats", row["hash"], row["ext"])
        with open(path, "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == row["hash"]
    blobs = [n for _, _, names in os.walk(str(tmp_path / "domains")) for n in names]
    assert len(blobs) == 70 and not [n for n in blobs if n.startswith(".tmp")]


def test_a_new_label_for_known_bytes_is_a_conflict_unless_relabel(store):
    image = png((1, 2, 3))
    store.add_samples("d", [NewSample("a", image), NewSample("b", png((9, 9, 9)))])
    split = store.working_set("d")[0]["split"]
    with pytest.raises(Conflict, match="another label"):
        store.add_samples("d", [NewSample("c", png((5, 5, 5))), NewSample("b", image)])
    assert len(store.working_set("d")) == 2  # all or nothing: the new image is not there
    moved = store.add_samples("d", [NewSample("b", image)], relabel=True)
    assert (moved.added, moved.duplicates, moved.relabeled) == (0, 1, 1)
    row = [r for r in store.working_set("d") if r["hash"] == moved.ids[0]][0]
    assert (row["label"], row["split"]) == ("b", split)  # the split stays
    with pytest.raises(InvalidInput, match="both"):
        store.add_samples("d", [NewSample("a", image), NewSample("b", image)])


@pytest.mark.parametrize("label", ["", ".", "..", "a/b", "a\\b", ".hidden", " cat", "cat ",
                                   "x" * 256, "\u00e9" * 128, "bad\u202eevil", "zero\u200bwidth",
                                   "line\nbreak", "tab\tname", "nul\x00", None, 7])
def test_bad_labels_are_refused_and_nothing_is_stored(store, tmp_path, label):
    with pytest.raises(InvalidInput):
        store.add_samples("d", [NewSample("ok", png((1, 1, 1))), NewSample(label, png((2, 2, 2)))])
    assert store.list_domains() == [] and not os.path.exists(str(tmp_path / "domains"))


def test_labels_are_kept_in_nfc_so_one_class_has_one_name(store):
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    store.add_samples("d", [NewSample(decomposed, png((1, 1, 1))),
                            NewSample(composed, png((2, 2, 2)))])
    assert {r["label"] for r in store.working_set("d")} == {composed}


def test_the_archive_limits_apply_to_samples(store, tmp_path):
    limits = Limits(max_files=2, max_extracted_bytes=4000, max_pixels=32 * 32)
    with pytest.raises(InvalidInput, match="limit is 2"):
        store.add_samples("d", many("a", 3, 1), limits=limits)
    with pytest.raises(PayloadTooLarge):
        store.add_samples("d", [NewSample("a", png((1, 1, 1)) + b"\0" * 5000)], limits=limits)
    with pytest.raises(ImageTooLarge):
        store.add_samples("d", [NewSample("a", png((1, 1, 1), size=(33, 33)))], limits=limits)
    truncated = png((1, 2, 3), size=(30, 30))[:-30]
    for blob in (b"plain text", truncated, b"GIF89a" + b"\0" * 10):
        with pytest.raises(InvalidInput):
            store.add_samples("d", [NewSample("a", blob)], limits=limits)
    with pytest.raises(InvalidInput, match="source"):
        store.add_samples("d", [NewSample("a", png((1, 1, 1)), "camera-roll")])
    assert store.list_domains() == [] and not os.path.exists(str(tmp_path / "domains"))


def test_a_snapshot_is_a_complete_imagefolder_reused_by_its_id(store, tmp_path):
    store.add_samples("d", many("a", 12, 10) + many("b", 12, 200))
    lines = store.working_set_lines("d")
    root = str(tmp_path / "snaps")
    os.makedirs(os.path.join(root, ".staging-left-by-a-crash"))
    directory = snapshots.materialize(root, lines, lambda line: store.sample_path(
        "d", line.hash, line.ext))
    assert os.path.basename(directory) == snapshots.snapshot_id(lines)
    assert os.listdir(root) == [os.path.basename(directory)]  # the stale staging is gone
    found = sorted("%s\t%s\t%s" % (split, label, name[:64])
                   for split in ("train", "val")
                   for label in os.listdir(os.path.join(directory, split))
                   for name in os.listdir(os.path.join(directory, split, label)))
    assert found == snapshots.read_manifest(directory) == sorted(
        snapshots.line_text(line).rstrip("\n") for line in lines)
    a_file = os.path.join(directory, lines[0].split, lines[0].label, lines[0].hash + lines[0].ext)
    assert os.stat(a_file).st_ino == os.stat(store.sample_path("d", lines[0].hash,
                                                               lines[0].ext)).st_ino
    os.utime(directory, (1, 1))
    assert snapshots.materialize(root, lines, lambda line: "/nonexistent") == directory
    assert os.stat(directory).st_mtime == 1  # reused, not rebuilt


def test_a_failed_snapshot_leaves_nothing_behind(store, tmp_path):
    store.add_samples("d", many("a", 6, 10) + many("b", 6, 200))
    lines = store.working_set_lines("d")
    root = str(tmp_path / "snaps")
    calls = []

    def file_of(line):
        calls.append(line)
        if len(calls) == 5:
            raise OSError("disk gone")
        return store.sample_path("d", line.hash, line.ext)

    with pytest.raises(OSError):
        snapshots.materialize(root, lines, file_of)
    assert os.listdir(root) == []
    with pytest.raises(InvalidInput, match="at least 2 classes"):
        snapshots.materialize(root, [x for x in lines if x.label == "a"], file_of)
    only_val = [SnapshotLine("val", "c", "3" * 64, ".png")]
    with pytest.raises(InvalidInput, match="only in val"):
        snapshots.materialize(root, lines + only_val, file_of)


def test_difference_hash_sees_structure_not_small_changes():
    gradient = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    brighter = gradient.point(lambda v: min(255, v + 10))
    flipped = gradient.transpose(Image.FLIP_TOP_BOTTOM).rotate(90)
    assert bin(difference_hash(gradient) ^ difference_hash(brighter)).count("1") <= 2
    assert bin(difference_hash(gradient) ^ difference_hash(flipped)).count("1") > 16


def _rows(spec):
    """Working-set rows from (label, split, dhash) triples."""
    return [{"hash": "%064x" % i, "label": label, "split": split, "dhash": dhash,
             "source": "upload", "ext": ".png"} for i, (label, split, dhash) in enumerate(spec)]


def test_dataset_warnings_on_a_crafted_set():
    spec = [("big", "train", (i * 0x9E3779B97F4A7C15) % (1 << 64)) for i in range(40)]
    spec += [("big", "val", (0x5555 << 20) | 0b111)]          # 3 bits from a train image:
    spec += [("small", "train", (0x5555 << 20))]               # a near duplicate
    spec += [("small", "val", (1 << 64) - 1 - (0x5555 << 20))]  # far from everything
    spec += [("ghost", "val", 12345)]
    stats = dataset_stats("d", _rows(spec), min_per_class=20)
    kinds = {w["kind"]: w for w in stats["warnings"]}
    assert set(kinds) == {"too_few_images", "imbalance", "near_duplicates", "no_train_images"}
    assert kinds["too_few_images"]["classes"] == ["ghost", "small"]
    assert kinds["imbalance"]["classes"] == ["big", "ghost"]
    assert kinds["no_train_images"]["classes"] == ["ghost"]
    assert kinds["near_duplicates"]["pairs"] == [("%064x" % 41, "%064x" % 40)]
    assert stats["classes"] == [{"label": "big", "train": 40, "val": 1, "total": 41},
                                {"label": "ghost", "train": 0, "val": 1, "total": 1},
                                {"label": "small", "train": 1, "val": 1, "total": 2}]
    assert stats["splits"] == {"train": 41, "val": 3} and stats["total"] == 44
    assert stats["thresholds"]["near_duplicate_bits"] == NEAR_DUPLICATE_BITS


def test_near_duplicates_found_by_bands_match_a_brute_force_search():
    import random

    rng = random.Random(3)
    spec = []
    for i in range(300):
        base = rng.getrandbits(64)
        spec.append(("a", "train", base))
        if i % 3 == 0:  # a val image 0-5 bits away
            flips = rng.sample(range(64), rng.randint(0, 5))
            spec.append(("a", "val", base ^ sum(1 << b for b in flips)))
    rows = _rows(spec)
    brute = sorted((t["hash"], v["hash"]) for t in rows for v in rows
                   if t["split"] == "train" and v["split"] == "val"
                   and bin(t["dhash"] ^ v["dhash"]).count("1") <= NEAR_DUPLICATE_BITS)
    stats = dataset_stats("d", rows, 1)
    found = [w for w in stats["warnings"] if w["kind"] == "near_duplicates"]
    assert brute and found and found[0]["pairs"] == brute[:20]
    assert str(len(brute)) in found[0]["message"]
    assert stats["near_duplicates_checked"] < len(rows) ** 2 // 10  # bucketed, not all pairs
