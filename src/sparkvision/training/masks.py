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
