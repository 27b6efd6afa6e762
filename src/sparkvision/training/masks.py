"""Keep pruned channels pruned while a network trains.

Structured pruning (:mod:`sparkvision.deploy.prune`) leaves whole convolution filters
at exactly zero. An optimiser step would move them again (weight decay, momentum, and
the gradient itself), so fine-tuning records which output channels are zero in the
starting weights and multiplies each such weight by its fixed 0/1 mask after every
step. The state dict keeps its ordinary keys (unlike ``torch.nn.utils.prune``'s
``weight_orig``/``weight_mask`` reparametrisation), so checkpoints, resuming and ONNX
export work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def zero_output_channels(weight: torch.Tensor) -> torch.Tensor:
    """Boolean per output channel: is its whole filter zero?"""
    return weight.detach().flatten(1).abs().sum(dim=1) == 0


@dataclass
class ChannelMasks:
    """Fixed 0/1 masks over the output channels of convolutions (name -> (weight, mask))."""

    masks: dict[str, tuple[nn.Parameter, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def of_zero_channels(cls, model: nn.Module) -> ChannelMasks:
        """Masks of every ``Conv2d`` whose weight has output channels that are all zero
        (on the weights' device: build them after the model has moved)."""
        found = {}
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and module.out_channels > 1:
                zero = zero_output_channels(module.weight)
                if zero.any():
                    shape = (-1,) + (1,) * (module.weight.dim() - 1)
                    mask = (~zero).to(module.weight.dtype).view(shape)
                    found[name] = (module.weight, mask)
        return cls(found)

    @property
    def channels(self) -> int:
        """Output channels held at zero."""
        return sum(int((mask == 0).sum()) for _, mask in self.masks.values())

    def __len__(self) -> int:
        return len(self.masks)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked channels again (after every optimiser step)."""
        for weight, mask in self.masks.values():
            weight.mul_(mask)


@torch.no_grad()
def settle_batch_norms(model: nn.Module, x: torch.Tensor) -> int:
    """Make batch norms fed by pruned channels give in eval mode what they give in training.

    A pruned channel's input to the next batch norm is a constant (zero, or the conv's
    bias): in training the batch norm outputs ``beta`` for it, but its running mean only
    decays towards that constant, so in eval mode it outputs something else. Setting the
    running mean to the constant makes both ``beta``. Channels are found from one eval
    forward pass on real inputs ``x``: those whose input is exactly constant.
    """
    seen: list[tuple[nn.modules.batchnorm._BatchNorm, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, _out: seen.append((mod, inp[0])))
             for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    settled = 0
    for module, inp in seen:
        flat = inp.transpose(0, 1).flatten(1)
        constant = (flat == flat[:, :1]).all(dim=1)
        if constant.any():
            module.running_mean[constant] = flat[constant, 0].to(module.running_mean.dtype)
            settled += int(constant.sum())
    return settled
