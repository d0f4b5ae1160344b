"""Make a freshly exported graph fully static: constant pads and reshape targets, known
output shape.

The legacy exporter writes ``F.pad`` as a Pad whose ``pads`` input is computed in the graph
(Concat, Reshape, and a Slice with step -1 that its constant folding leaves alone), even when
every pad is a constant, and GroupNorm as Reshapes to sizes computed from Shape. Shape
inference then loses every size after them, the output's batch becomes symbolic, and
TensorRT 8.0's ONNX parser wants ``pads`` as an initializer. Here each such shape-like tensor
is evaluated once with onnxruntime (at the fixed input shape it is a constant), stored as
an initializer, the nodes that only computed it are dropped, and the output's shape is
filled in from onnx's shape inference.
"""
from typing import List, Sequence, Set

import numpy as np


def _constant_names(graph) -> Set[str]:
    names = {t.name for t in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


# The int64 shape-like input of each operator whose output shape it decides: Pad's pads,
# Reshape's and Expand's target shape (GroupNorm exports as Reshape by Shape-computed sizes),
# Resize's output sizes (bilinear upsampling to a size: batch and channels from Shape).
SHAPE_INPUTS = {"Pad": 1, "Reshape": 1, "Expand": 1, "Resize": 3}


def _computed_shapes(graph) -> List[str]:
    constants = _constant_names(graph)
    names = set()
    for node in graph.node:
        index = SHAPE_INPUTS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] \
                and node.input[index] not in constants:
            names.add(node.input[index])
    return sorted(names)


def _evaluate(model, names: Sequence[str], input_shape: Sequence[int]) -> List[np.ndarray]:
    import onnx
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64,
                                                                 None) for name in names)
    session = onnxruntime.InferenceSession(probe.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.zeros(tuple(input_shape), np.float32)}
    return session.run(list(names), feed)


def _drop_dead_nodes(graph) -> None:
    """Keep only nodes whose outputs something downstream (or the graph's output) reads."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))


def _static_output_shapes(model) -> None:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    for declared, found in zip(model.graph.output, inferred.graph.output):
        dims = found.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            declared.type.tensor_type.shape.CopyFrom(found.type.tensor_type.shape)


def make_static(path: str, input_shape: Sequence[int]) -> None:
    """Rewrite the ONNX file at ``path`` in place (the caller's staging directory)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    names = _computed_shapes(graph)
    if names:
        values = _evaluate(model, names, input_shape)
        producers = set(names)
        nodes = [n for n in graph.node if not producers.intersection(n.output)]
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(numpy_helper.from_array(v.astype(np.int64), name)
                                 for name, v in zip(names, values))
        _drop_dead_nodes(graph)
    _static_output_shapes(model)
    onnx.save(model, path)
