"""What a domain's working set holds, and what may make training on it poor (stdlib only).

Counts per class and split, and warnings: a class under a minimum of images, a strong
imbalance (the largest class over IMBALANCE_RATIO times the smallest), a class whose images
all fell in val, and near-duplicate images across train and val -- a val image that is
nearly a train image measures memory, not generalisation.

Near duplicates are pairs whose 64-bit dHashes differ in at most NEAR_DUPLICATE_BITS bits.
The work is bounded: each dHash is cut into NEAR_DUPLICATE_BITS + 1 bands, and only a train
and a val image that agree on a whole band are compared -- two hashes within that distance
always agree on at least one band (pigeonhole), so no such pair is missed -- and at most
MAX_COMPARISONS pairs are compared (the count is reported, and a warning says when the cap
cut the search short: many near-identical images, e.g. flat colours, share every band).
"""
from collections import defaultdict
from typing import Dict, Iterable, List, Tuple

from device_agent.imagefolder import MIN_CLASSES, SPLITS, TRAIN, VAL
from device_agent.store.database import Record
from device_agent.store.snapshots import SnapshotLine, snapshot_id

IMBALANCE_RATIO = 4.0
NEAR_DUPLICATE_BITS = 3
BANDS = NEAR_DUPLICATE_BITS + 1
BAND_BITS = 64 // BANDS
MAX_COMPARISONS = 200000
MAX_PAIRS_SHOWN = 20


def _bands(dhash: int) -> Iterable[Tuple[int, int]]:
    mask = (1 << BAND_BITS) - 1
    for band in range(BANDS):
        yield band, (dhash >> (band * BAND_BITS)) & mask


def near_duplicates(rows: List[Record]) -> Tuple[List[Tuple[str, str]], int, bool]:
    """(train hash, val hash) pairs within NEAR_DUPLICATE_BITS bits, the comparisons made,
    and whether the cap stopped the search."""
    buckets = defaultdict(list)  # type: Dict[Tuple[int, int], List[Record]]
    for row in rows:
        if row["split"] == VAL:
            for key in _bands(int(row["dhash"])):
                buckets[key].append(row)
    pairs = set()  # type: Set[Tuple[str, str]]
    compared = 0
    for row in rows:
        if row["split"] != TRAIN:
            continue
        for key in _bands(int(row["dhash"])):
            for other in buckets.get(key, ()):
                if compared >= MAX_COMPARISONS:
                    return sorted(pairs), compared, True
                compared += 1
                if bin(int(row["dhash"]) ^ int(other["dhash"])).count("1") <= NEAR_DUPLICATE_BITS:
                    pairs.add((str(row["hash"]), str(other["hash"])))
    return sorted(pairs), compared, False


def _class_counts(rows: List[Record]) -> List[Dict[str, object]]:
    counts = defaultdict(lambda: dict.fromkeys(SPLITS, 0))  # type: Dict[str, Dict[str, int]]
    for row in rows:
        counts[str(row["label"])][str(row["split"])] += 1
    return [{"label": label, "train": c[TRAIN], "val": c[VAL], "total": c[TRAIN] + c[VAL]}
            for label, c in sorted(counts.items())]


def _warnings(classes: List[Dict[str, object]], rows: List[Record],
              min_per_class: int) -> Tuple[List[Dict[str, object]], int]:
    warnings = []  # type: List[Dict[str, object]]

    def warn(kind: str, message: str, names: List[str] = (), pairs=()) -> None:
        warnings.append({"kind": kind, "message": message, "classes": list(names)[:50],
                         "pairs": list(pairs)[:MAX_PAIRS_SHOWN]})

    trained = [c for c in classes if c["train"]]
    if len(trained) < MIN_CLASSES:
        warn("too_few_classes", "%d class(es) with training images; a job needs %d"
             % (len(trained), MIN_CLASSES))
    only_val = [str(c["label"]) for c in classes if not c["train"]]
    if only_val:
        warn("no_train_images", "all images of %d class(es) are in val: a job refuses this "
             "set until they have training images" % len(only_val), only_val)
    few = [str(c["label"]) for c in classes if int(c["total"]) < min_per_class]
    if few:
        warn("too_few_images", "%d class(es) have fewer than %d images" % (len(few),
                                                                          min_per_class), few)
    if len(classes) >= 2:
        largest = max(classes, key=lambda c: int(c["total"]))
        smallest = min(classes, key=lambda c: int(c["total"]))
        if int(largest["total"]) > IMBALANCE_RATIO * int(smallest["total"]):
            warn("imbalance", "%s has %d images, %s only %d (over %g:1)"
                 % (largest["label"], largest["total"], smallest["label"], smallest["total"],
                    IMBALANCE_RATIO), [str(largest["label"]), str(smallest["label"])])
    pairs, compared, capped = near_duplicates(rows)
    if pairs or capped:
        warn("near_duplicates", "%d train/val pair(s) within %d bits of dHash%s: val then "
             "measures memory" % (len(pairs), NEAR_DUPLICATE_BITS,
                                  " (search stopped at %d comparisons)" % compared
                                  if capped else ""), pairs=pairs)
    return warnings, compared


def dataset_stats(domain: str, rows: List[Record], min_per_class: int) -> Dict[str, object]:
    """The GET /v1/domains/{d}/dataset body (api.schemas.DatasetStats) from the working
    set's rows (:meth:`device_agent.store.samples.SampleRecords.working_set`)."""
    classes = _class_counts(rows)
    warnings, compared = _warnings(classes, rows, min_per_class)
    sources = defaultdict(int)  # type: Dict[str, int]
    for row in rows:
        sources[str(row["source"])] += 1
    lines = [SnapshotLine(str(r["split"]), str(r["label"]), str(r["hash"]), str(r["ext"]))
             for r in rows]
    return {"domain": domain, "snapshot_id": snapshot_id(lines) if lines else None,
            "total": len(rows), "splits": {s: sum(int(c[s]) for c in classes) for s in SPLITS},
            "sources": dict(sources), "classes": classes, "warnings": warnings,
            "thresholds": {"min_images_per_class": min_per_class,
                           "imbalance_ratio": IMBALANCE_RATIO,
                           "near_duplicate_bits": NEAR_DUPLICATE_BITS,
                           "near_duplicate_max_pairs_checked": MAX_COMPARISONS},
            "near_duplicates_checked": compared}
