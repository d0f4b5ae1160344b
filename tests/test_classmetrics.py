"""Per-class results (device_agent.classmetrics, ground floor): figures derived by hand on a
tiny set, the same as scikit-learn's on random ones, and stored reports read, not trusted."""
import random

import pytest

from device_agent import classmetrics
from device_agent.jobspec import JobReport

CLASSES = ["cat", "dog", "fox"]
# 10 validation images: 4 cats (2 taken for cats, 1 for a dog, 1 for a fox), 3 dogs (2 dogs,
# 1 cat), 3 foxes (2 taken for dogs, 1 fox).
LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDICTIONS = [0, 0, 1, 2, 1, 1, 0, 1, 1, 2]
# By hand: rows = true class, columns = predicted.
#            cat dog fox   (row sums = support: 4, 3, 3)
#   cat    [  2,  1,  1 ]
#   dog    [  1,  2,  0 ]
#   fox    [  0,  2,  1 ]  (column sums = predicted: 3, 5, 2)
MATRIX = [[2, 1, 1], [1, 2, 0], [0, 2, 1]]
# precision = diagonal / column sum: cat 2/3, dog 2/5, fox 1/2
# recall    = diagonal / row sum:    cat 2/4, dog 2/3, fox 1/3
# F1 = 2PR/(P+R): cat 2(1/3)/(7/6) = 4/7; dog 2(4/15)/(16/15) = 1/2; fox 2(1/6)/(5/6) = 2/5
EXPECTED = [("cat", 2 / 3, 1 / 2, 4 / 7, 4, 3), ("dog", 2 / 5, 2 / 3, 1 / 2, 3, 5),
            ("fox", 1 / 2, 1 / 3, 2 / 5, 3, 2)]
# off-diagonal cells, largest first, ties in class order (row, then column)
PAIRS = [("fox", "dog", 2), ("cat", "dog", 1), ("cat", "fox", 1), ("dog", "cat", 1)]


def test_a_tiny_set_matches_the_hand_computed_figures():
    matrix = classmetrics.confusion_matrix(LABELS, PREDICTIONS, 3)
    assert matrix == MATRIX
    results = classmetrics.class_results(CLASSES, matrix)
    assert (results.total, results.correct) == (10, 5)
    for got, (name, precision, recall, f1, support, predicted) in zip(results.per_class,
                                                                      EXPECTED):
        assert got.name == name and (got.support, got.predicted) == (support, predicted)
        assert got.precision == pytest.approx(precision)
        assert got.recall == pytest.approx(recall)
        assert got.f1 == pytest.approx(f1)
    assert [tuple(p) for p in results.most_confused] == PAIRS
    assert [tuple(p) for p in classmetrics.most_confused(CLASSES, matrix, limit=2)] == PAIRS[:2]


def test_a_class_never_predicted_has_no_precision_and_an_absent_one_no_recall():
    # two "a" images, both right, one "b" taken for an "a"; "c" has no image and no prediction
    matrix = classmetrics.confusion_matrix([0, 0, 1], [0, 0, 0], 3)
    a, b, c = classmetrics.per_class(["a", "b", "c"], matrix)
    assert (a.precision, a.recall) == (pytest.approx(2 / 3), 1.0)
    assert a.f1 == pytest.approx(0.8)  # 2 (2/3) / (5/3)
    assert (b.precision, b.recall, b.f1, b.support, b.predicted) == (None, 0.0, None, 1, 0)
    assert (c.precision, c.recall, c.f1, c.support) == (None, None, None, 0)
    # right about nothing it predicted, and predicted: precision and recall 0, F1 0 (not None)
    wrong = classmetrics.per_class(["a", "b"], classmetrics.confusion_matrix([0, 1], [1, 0], 2))
    assert [(f.precision, f.recall, f.f1) for f in wrong] == [(0.0, 0.0, 0.0)] * 2
    assert classmetrics.most_confused(["a", "b", "c"], [[3, 0, 0], [0, 1, 0], [0, 0, 0]]) == []


@pytest.mark.parametrize("labels, predictions, n", [
    ([0, 1], [0], 2), ([0, 2], [0, 1], 2), ([-1], [0], 2), ([0], [5], 2), ([0], [0], 0)])
def test_bad_input_is_refused(labels, predictions, n):
    with pytest.raises(ValueError):
        classmetrics.confusion_matrix(labels, predictions, n)


def test_a_matrix_that_does_not_fit_its_classes_is_refused():
    with pytest.raises(ValueError):
        classmetrics.class_results(["a", "b"], [[1, 0]])
    with pytest.raises(ValueError):
        classmetrics.class_results(["a", "b"], [[1, 0], [0, 1, 2]])


def test_cells_round_trip_and_hostile_cells_read_as_none():
    cells = classmetrics.to_cells(MATRIX)
    assert cells == [[0, 0, 2], [0, 1, 1], [0, 2, 1], [1, 0, 1], [1, 1, 2], [2, 1, 2],
                     [2, 2, 1]]
    assert classmetrics.from_cells(cells, 3) == MATRIX
    for bad in (None, "x", {"0": 1}, [[0, 0]], [[0, 0, 1.5]], [[0, 0, True]], [[3, 0, 1]],
                [[0, -1, 1]], [[0, 0, 0]], [[0, 0, -4]], [["0", 0, 1]],
                [[0, 0, 1]] * (classmetrics.MAX_CELLS + 1)):
        assert classmetrics.from_cells(bad, 3) is None, bad
    assert classmetrics.from_cells(cells, 0) is None


def test_a_job_report_carries_its_matrix_and_an_old_one_has_none():
    report = JobReport(classes=CLASSES, val_top1=0.5, val_confusion=classmetrics.to_cells(MATRIX))
    stored = JobReport.from_dict(dict(report.to_dict()))
    results = stored.class_results()
    assert results.matrix == MATRIX and results.classes == CLASSES
    assert results.correct / float(results.total) == stored.val_top1
    assert "val_confusion" not in stored.metrics()  # not in the adapter's capped config
    assert JobReport.from_dict({"classes": CLASSES, "val_top1": 0.5}).class_results() is None
    assert JobReport(classes=CLASSES, val_confusion=[[0, 7, 1]]).class_results() is None
    cells = classmetrics.to_cells(MATRIX)  # an uploader's summary: read, not trusted
    for classes in (None, "cat", [1, 2, 3], ["cat", "dog", None], {"a": 1}):
        assert classmetrics.results_of(classes, cells) is None, classes
    assert classmetrics.results_of(CLASSES, cells).matrix == MATRIX


def test_the_same_as_scikit_learn_on_random_sets():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(3)
    for n in (2, 3, 7):
        labels = [rng.randrange(n) for _ in range(200)]
        predictions = [label if rng.random() < 0.6 else rng.randrange(n) for label in labels]
        matrix = classmetrics.confusion_matrix(labels, predictions, n)
        assert matrix == metrics.confusion_matrix(labels, predictions,
                                                  labels=list(range(n))).tolist()
        precision, recall, f1, support = metrics.precision_recall_fscore_support(
            labels, predictions, labels=list(range(n)), zero_division=0)
        figures = classmetrics.per_class([str(i) for i in range(n)], matrix)
        assert [f.precision for f in figures] == pytest.approx(list(precision))
        assert [f.recall for f in figures] == pytest.approx(list(recall))
        assert [f.f1 for f in figures] == pytest.approx(list(f1))
        assert [f.support for f in figures] == list(support)
