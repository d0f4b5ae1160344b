"""Classify images with a domain's adapter: the CLI's predict and the worker share it."""
from typing import Dict, List

import torch
from PIL import Image

from device_agent.model.network import AdaptedNet
from device_agent.training import data


def classify(net: AdaptedNet, config: Dict[str, object], images: List[Image.Image], top_k: int,
             device: torch.device) -> List[List[Dict[str, object]]]:
    """Top-k (class, probability) for each image, by the active domain of ``net``."""
    settings = data.TransformSettings(int(config["input_size"]), config["mean"], config["std"])
    transform = data.eval_transform(settings)
    batch = torch.stack([transform(data.to_rgb(image)) for image in images]).to(device)
    net.to(device).eval()
    with torch.no_grad():
        probs = torch.softmax(net(batch), dim=1)
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    names = config["class_names"]
    return [[{"class": names[i], "probability": round(p, 6)}
             for p, i in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(top.values, top.indices)]
