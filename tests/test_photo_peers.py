"""The photo benchmark's peers (benchmarks/peers.py, issue 15), checked as its table reads
them: fine-tuning with activation checkpointing computes fine-tuning's loss and gradients
(so it differs in memory and time only), and PEFT's LoRA starts as the linear probe it is
built on (B = 0), trains only its matrices and the head, and leaves the shared backbone's
weights alone."""
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                "benchmarks"))
from peers import build, lean_path  # noqa: E402

from device_agent.training.step import train_step  # noqa: E402

BACKBONE = "efficientnet_lite0"
CLASSES = 3


def _net(method, **kwargs):
    torch.manual_seed(1)  # the same head (and finetune copy) for every method built
    return build(BACKBONE, method, CLASSES, weights="random", **kwargs)


def _batch():
    generator = torch.Generator().manual_seed(2)
    return torch.randn(4, 3, 48, 48, generator=generator), torch.tensor([0, 1, 2, 0])


def _loss_and_grads(net, lean):
    net.train()
    images, labels = _batch()
    torch.manual_seed(3)  # any dropout draws the same mask
    loss = F.cross_entropy(net(images, lean=lean), labels)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in net.domain.named_parameters()
                         if p.requires_grad}


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "plain"])
def test_checkpointed_finetune_has_finetunes_gradients(lean):
    plain_loss, plain = _loss_and_grads(_net("finetune"), lean)
    checkpointed_loss, checkpointed = _loss_and_grads(_net("finetune_ckpt"), lean)
    assert abs(plain_loss - checkpointed_loss) < 1e-5
    assert sorted(plain) == sorted(checkpointed) and len(plain) > 50
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], rtol=1e-4, atol=1e-6), name
    assert any(float(g.abs().sum()) > 0 for g in plain.values())


def test_checkpointed_finetune_evaluates_as_finetune_without_checkpointing():
    plain, checkpointed = _net("finetune").eval(), _net("finetune_ckpt").eval()
    images, _ = _batch()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")  # reentrant checkpoint warns when no input needs grad
        assert torch.allclose(plain(images, lean=False), checkpointed(images, lean=False),
                              atol=1e-5)


def test_peft_lora_starts_as_its_linear_probe_and_trains_only_its_matrices():
    pytest.importorskip("peft", reason="the benchmark's peers extra (pip install -e .[peers])")
    lora, probe = _net("peft_lora", rank=4), _net("last")
    images, labels = _batch()
    lora.eval()
    probe.eval()
    with torch.no_grad():  # B starts at zero: LoRA adds nothing yet
        assert torch.allclose(lora(images, lean=False), probe(images, lean=False), atol=1e-5)
    trainable = {id(p) for p in lora.domain.parameters() if p.requires_grad}
    matrices = {name: p for name, p in lora.backbone.named_parameters() if "lora_" in name}
    head = [p for name, p in lora.domain.named_parameters() if name.startswith("head.")]
    assert trainable == {id(p) for p in list(matrices.values()) + head}
    assert any("lora_A" in name for name in matrices) and any("lora_B" in name
                                                             for name in matrices)
    frozen = {name: p.detach().clone() for name, p in lora.backbone.named_parameters()
              if name not in matrices}
    optimizer = torch.optim.Adam([p for p in lora.domain.parameters() if p.requires_grad],
                                 lr=1e-2)
    lora.train()
    train_step(lora, optimizer, images, labels, lean=lean_path("peft_lora"))
    assert all(torch.equal(p, frozen[name]) for name, p in lora.backbone.named_parameters()
               if name in frozen)
    assert any(float(p.detach().abs().sum()) > 0 for name, p in matrices.items()
               if "lora_B" in name)  # B still zero: LoRA learned nothing
    lora.eval()
    with torch.no_grad():
        assert not torch.allclose(lora(images, lean=False), probe(images, lean=False),
                                  atol=1e-4)
