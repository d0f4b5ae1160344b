"""One optimisation step, shared by the training loop and the memory benchmarks."""
import torch
import torch.nn.functional as F

from device_agent.model.network import AdaptedNet


def make_optimizer(net: AdaptedNet, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam over the active domain's trainable parameters only (never the shared backbone)."""
    return torch.optim.Adam(net.domain.trainable_parameters(), lr=lr, weight_decay=weight_decay)


def train_step(net: AdaptedNet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, lean: bool = True, micro_batch: int = 0,
               label_smoothing: float = 0.0) -> float:
    """Forward, backward and update; returns the batch's mean loss.

    ``micro_batch`` > 0 accumulates gradients over chunks of that size. With the shared
    backbone's batch-norm statistics frozen this gives the same gradient as one pass (to
    float rounding) at a fraction of the peak memory; ``finetune`` normalizes with batch
    statistics, so it always takes the whole batch at once.
    """
    optimizer.zero_grad()
    total = images.shape[0]
    chunk = micro_batch if 0 < micro_batch < total and net.domain.backbone is None else total
    loss_sum = 0.0
    for start in range(0, total, chunk):
        x, y = images[start:start + chunk], labels[start:start + chunk]
        loss = F.cross_entropy(net(x, lean=lean), y, label_smoothing=label_smoothing)
        (loss * (x.shape[0] / float(total))).backward()
        loss_sum += loss.item() * x.shape[0]
    optimizer.step()
    return loss_sum / total
