"""One call from names to a ready network: backbone + one domain of a method."""
from typing import Dict, Optional

from device_agent.model.backbones import build_backbone
from device_agent.model.network import AdaptedNet, DomainModule


def build_net(backbone: str, method: str, num_classes: int, weights: Optional[str] = None,
              adapter_settings: Optional[Dict[str, object]] = None, train_bn: bool = False,
              domain: str = "default", prefix_micro_batch: int = 2) -> AdaptedNet:
    """A network on backbone ``backbone`` with a fresh domain ``domain`` trained by ``method``.

    ``weights`` follows :func:`build_backbone`: None (the manifest's file), a path, or
    ``"random"``. The backbone carries its spec (``net.backbone_spec``).
    """
    frozen, _ = build_backbone(backbone, weights)
    net = AdaptedNet(frozen, prefix_micro_batch=prefix_micro_batch)
    net.add_domain(domain, DomainModule(frozen, method, num_classes, adapter_settings, train_bn))
    return net
