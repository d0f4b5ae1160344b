"""Per-class results of a classifier (stdlib only, Python 3.6 syntax; both columns import it).

The trainer counts its validation predictions into a confusion matrix with
:func:`confusion_matrix`; the daemon derives everything it shows from that matrix with
:func:`class_results`, so the figures are computed in one place and cannot disagree with
the matrix they are shown beside.

Conventions (as scikit-learn's ``confusion_matrix``): ``matrix[t][p]`` counts the images of
true class ``t`` predicted as ``p``; rows and columns follow the class order (the label order
of the dataset, its sorted class names). A class that is never predicted has no precision
(0/0): it is ``None`` here, not 0 as scikit-learn's ``zero_division`` default writes with a
warning -- 0 would read as "every prediction of this class was wrong" when there was none.
Likewise a class absent from the validation split has no recall (``None``), and F1 is
``None`` when either is.

On the wire and in stored reports a matrix travels as its non-zero cells (:func:`to_cells`,
:func:`from_cells`): a mostly diagonal matrix of n classes is about n cells, not n^2, and
the count of cells is bounded by the validation images, so a report fits one protocol frame.
"""
from typing import List, NamedTuple, Optional, Sequence

Matrix = List[List[int]]
Cell = List[int]  # [true class, predicted class, count]
MAX_CELLS = 20000  # non-zero cells a report carries (~20 bytes each in JSON: << 1 MiB frame)
MOST_CONFUSED = 10  # pairs shown by default


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int],
                     n_classes: int) -> Matrix:
    """``n_classes`` x ``n_classes`` counts: row = true label, column = prediction.
    ValueError for unequal lengths or a label outside ``[0, n_classes)``."""
    if len(labels) != len(predictions):
        raise ValueError("%d labels but %d predictions" % (len(labels), len(predictions)))
    if n_classes < 1:
        raise ValueError("n_classes must be >= 1, not %r" % (n_classes,))
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for true, predicted in zip(labels, predictions):
        if not (0 <= true < n_classes and 0 <= predicted < n_classes):
            raise ValueError("label %r / prediction %r outside 0..%d"
                             % (true, predicted, n_classes - 1))
        matrix[true][predicted] += 1
    return matrix


def add_into(total: Matrix, part: Matrix) -> None:
    """``total += part``, cell by cell (a matrix counted batch by batch)."""
    for row, more in zip(total, part):
        for column, count in enumerate(more):
            row[column] += count


def to_cells(matrix: Matrix) -> List[Cell]:
    """The non-zero cells, row by row."""
    return [[t, p, count] for t, row in enumerate(matrix) for p, count in enumerate(row)
            if count]


def from_cells(cells: object, n_classes: int) -> Optional[Matrix]:
    """The matrix of ``cells`` -- or None when they are not a well-formed list of
    ``[true, predicted, count]`` within ``n_classes`` (a stored report is read, not
    trusted: a malformed one shows no per-class results rather than failing the view)."""
    if not isinstance(cells, list) or n_classes < 1 or len(cells) > MAX_CELLS:
        return None
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for cell in cells:
        if not (isinstance(cell, list) and len(cell) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in cell)):
            return None
        true, predicted, count = cell
        if not (0 <= true < n_classes and 0 <= predicted < n_classes and count > 0):
            return None
        matrix[true][predicted] += count
    return matrix


class ClassFigures(NamedTuple):
    name: str
    precision: Optional[float]  # None: never predicted (0/0)
    recall: Optional[float]     # None: no validation image of the class (0/0)
    f1: Optional[float]         # None when either is None
    support: int                # validation images of the class (the row's sum)
    predicted: int              # validation images predicted as the class (the column's sum)


class ConfusedPair(NamedTuple):
    true: str       # the class the images are
    predicted: str  # the class they were taken for
    count: int


class ClassResults(NamedTuple):
    classes: List[str]          # the order of the matrix's rows and columns
    matrix: Matrix              # matrix[true][predicted]
    per_class: List[ClassFigures]
    most_confused: List[ConfusedPair]
    total: int                  # images counted (the matrix's sum)
    correct: int                # the diagonal's sum; correct / total is top-1


def _ratio(part: int, whole: int) -> Optional[float]:
    return part / float(whole) if whole else None


def per_class(classes: Sequence[str], matrix: Matrix) -> List[ClassFigures]:
    """Precision, recall, F1 and support of each class (order of ``classes``)."""
    figures = []
    for index, name in enumerate(classes):
        hits = matrix[index][index]
        support = sum(matrix[index])
        predicted = sum(row[index] for row in matrix)
        precision, recall = _ratio(hits, predicted), _ratio(hits, support)
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        figures.append(ClassFigures(name, precision, recall, f1, support, predicted))
    return figures


def most_confused(classes: Sequence[str], matrix: Matrix,
                  limit: int = MOST_CONFUSED) -> List[ConfusedPair]:
    """The off-diagonal cells with a count, largest first (ties in class order), at most
    ``limit``: which true class is taken for which, and how often."""
    pairs = [(-count, t, p) for t, row in enumerate(matrix) for p, count in enumerate(row)
             if count and t != p]
    return [ConfusedPair(classes[t], classes[p], -negative)
            for negative, t, p in sorted(pairs)[:max(limit, 0)]]


def results_of(classes: object, cells: object,
               limit: int = MOST_CONFUSED) -> Optional[ClassResults]:
    """The results of a stored report or version summary (its ``classes`` and
    ``val_confusion``), or None when either is missing or malformed: an imported adapter's
    summary is the uploader's, read here, never trusted to be well-formed."""
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return None
    matrix = from_cells(cells, len(classes))
    return None if matrix is None else class_results(classes, matrix, limit)


def class_results(classes: Sequence[str], matrix: Matrix,
                  limit: int = MOST_CONFUSED) -> ClassResults:
    """Everything shown of one evaluation: the matrix with its class order, the per-class
    figures, the most confused pairs and the totals."""
    if len(matrix) != len(classes) or any(len(row) != len(classes) for row in matrix):
        raise ValueError("a %d-class matrix needs %d x %d cells"
                         % (len(classes), len(classes), len(classes)))
    return ClassResults(list(classes), [list(row) for row in matrix], per_class(classes, matrix),
                        most_confused(classes, matrix, limit), sum(map(sum, matrix)),
                        sum(matrix[i][i] for i in range(len(classes))))
