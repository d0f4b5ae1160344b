"""CUDA-only checks (skipped without CUDA; scripts/device-check.sh runs them on a GPU
machine): the allocator cap holds, a lean step peaks below a plain one on the GPU, and the
lean ops give plain autograd's gradients on CUDA kernels too."""
import pytest
import torch
from test_model import _gradients, _perturb_adapters

from device_agent.model.builder import build_net
from device_agent.training import memory_guard

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA (scripts/device-check.sh on a GPU machine)")
CUDA = torch.device("cuda")
MB = 1 << 20


@pytest.fixture
def exact_fp32(monkeypatch):
    """No TF32 (Ampere and newer use it for convolutions by default): the comparisons are
    of two fp32 computations, not of two roundings to a 10-bit mantissa."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _net(backbone: str, method: str):
    torch.manual_seed(0)
    net = build_net(backbone, method, 5, weights="random")
    _perturb_adapters(net)
    net.domain.head.dropout = 0.0  # dropout would draw different masks in the two passes
    return net.to(CUDA).train()


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
@pytest.mark.parametrize("method", ["da2", "tinytl_bias", "bn_last"])
def test_lean_ops_on_cuda_match_plain_autograd(backbone, method, exact_fp32):
    net = _net(backbone, method)
    x = torch.randn(4, 3, 64, 56, device=CUDA)
    y = torch.tensor([1, 3, 0, 4], device=CUDA)
    plain, lean = _gradients(net, x, y, False), _gradients(net, x, y, True)
    assert plain.is_cuda and plain.abs().sum() > 0
    assert ((plain - lean).norm() / plain.norm()).item() < 1e-4


def _step_peak_mb(net, x, y, lean: bool) -> float:
    for param in net.parameters():
        param.grad = None
    torch.cuda.synchronize(CUDA)
    base = torch.cuda.memory_allocated(CUDA)
    torch.cuda.reset_peak_memory_stats(CUDA)
    _gradients(net, x, y, lean)
    torch.cuda.synchronize(CUDA)
    return (torch.cuda.max_memory_allocated(CUDA) - base) / MB


def test_a_lean_da2_step_peaks_below_a_plain_one_on_cuda():
    net = _net("mobilenet_v2", "da2")
    x = torch.randn(16, 3, 160, 160, device=CUDA)
    y = torch.arange(16, device=CUDA) % 5
    plain = _step_peak_mb(net, x, y, False)
    lean = _step_peak_mb(net, x, y, True)
    assert 0 < lean < plain, (lean, plain)


def test_the_allocator_cap_refuses_an_allocation_over_it():
    torch.cuda.empty_cache()  # the cap counts what the caching allocator holds
    try:
        fraction = memory_guard.cap_cuda_allocator(1024, CUDA)
        assert fraction is not None and 0 < fraction <= 1
        under = torch.empty(128 * MB, dtype=torch.uint8, device=CUDA)
        with pytest.raises(RuntimeError, match="out of memory"):
            torch.empty(2048 * MB, dtype=torch.uint8, device=CUDA)
        del under
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, CUDA)
        torch.cuda.empty_cache()
