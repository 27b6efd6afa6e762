"""HOG (histograms of oriented gradients) as a torch module: the classic-features baseline.

``hog`` is scikit-image's ``skimage.feature.hog`` (``orientations=9``, ``block_norm="L2-Hys"``)
written as tensor operations, so it exports to ONNX and runs through the same featurizer,
ONNX runner, ``fit``, ``predict`` and ``serve`` path as every CNN backbone:

1. grey: the shared preprocessing decodes to ITU-R 601 luma (Pillow's ``convert("L")``, the
   project's one colour rule), resized to 128x128 and scaled to [0, 1]; a 3-channel input
   is turned grey inside the module with the same weights;
2. gradients: centred ``[-1, 0, 1]`` differences, zero on the image's outer rows and columns;
3. unsigned orientation in [0, 180) degrees, hard-binned into 9 bins of 20 degrees, bin ``i``
   holding [20 i, 20 (i + 1)). This is what scikit-image does; Dalal and Triggs (and OpenCV's
   ``HOGDescriptor``) instead split each vote linearly between the two nearest bin centres
   (and trilinearly over cells). The module follows scikit-image, the reference it is tested
   against to a tight tolerance. The bin test compares the gradient with each boundary
   direction (the sign of a cross product) rather than computing an angle: ONNX has no atan2;
4. cell histograms: the gradient magnitudes of each bin averaged over 16x16-pixel cells
   (scikit-image divides each cell's sum by its area too); pixels past the last whole cell
   are left out;
5. blocks of 2x2 cells, one cell apart, each normalised L2-Hys (L2, clipped at 0.2,
   L2 again; epsilon 1e-5 as scikit-image), flattened in scikit-image's order (block row,
   block column, cell row, cell column, bin).

128x128 with 16 px cells gives 7x7 blocks of 36 values: 1,764 features, small enough for
MLlib's PCA (a dense covariance) and logistic regression. On imagenette-mini it beat
64x64 with 8 px cells (the same 1,764 features) by 3 points and 96x96 with 8 px cells
(4,356 features) by 0 to 5; on Fashion-MNIST the three were within a point.

The module has no weights and no classifier: its ONNX graph's one output, ``features``, serves
as both roles, as a Hugging Face backbone without a head does, and ``fit`` learns the classes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from sparkvision.config import PreprocessConfig
from sparkvision.models.registry import register

NAME = "hog"
SIZE = 128
CELL = 16
BLOCK = 2
ORIENTATIONS = 9
#: scikit-image's ``_hog_normalize_block`` epsilon.
EPS = 1e-5
#: L2-Hys clips the L2-normalised block here before normalising again.
CLIP = 0.2
#: ITU-R 601 luma weights (what Pillow's ``convert("L")`` uses, in integer form).
LUMA = (0.299, 0.587, 0.114)

PREPROCESS = PreprocessConfig.preset("unit", size=(SIZE, SIZE), channels=1, resize_mode="resize",
                                     interpolation="bilinear")


def feature_count(size: tuple[int, int] = (SIZE, SIZE), cell: int = CELL, block: int = BLOCK,
                  orientations: int = ORIENTATIONS) -> int:
    """Length of the HOG vector of a ``size`` (height, width) image."""
    rows, cols = (size[0] // cell - block + 1), (size[1] // cell - block + 1)
    if rows < 1 or cols < 1:
        raise ValueError(f"a {size[0]}x{size[1]} image holds no {block}x{block} block of {cell} px cells")
    return rows * cols * block * block * orientations


class HOG(nn.Module):
    """scikit-image's HOG (hard orientation binning, L2-Hys blocks) of (N, C, H, W) images in [0, 1].

    ``forward`` gives (N, features); :meth:`forward_features` is the same (the timm name the
    featurizer's export uses). C is 1 (grey) or 3 (turned grey with ITU-R 601 weights).
    """

    def __init__(self, cell: int = CELL, block: int = BLOCK, orientations: int = ORIENTATIONS,
                 in_chans: int = 1) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"HOG takes 1 (grey) or 3 (RGB) channels, got {in_chans}")
        self.cell, self.block, self.orientations, self.in_chans = cell, block, orientations, in_chans
        # Bin i holds angles in [b_i, b_(i+1)); an angle t >= b exactly when sin(t - b) >= 0, i.e. when
        # gy cos b - gx sin b >= 0 for a gradient (gx, gy) folded into the upper half-plane.
        bounds = [math.pi * i / orientations for i in range(1, orientations)]
        angles = torch.tensor(bounds, dtype=torch.float64)  # cos(90 deg) stays >= 0, as 90 >= 90
        self.register_buffer("bound_cos", angles.cos().float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("bound_sin", angles.sin().float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        grey = (x * self.luma).sum(dim=1, keepdim=True) if x.shape[1] == 3 else x
        hist = self.cell_histograms(grey)
        return self.normalized_blocks(hist).flatten(1)

    def cell_histograms(self, grey: torch.Tensor) -> torch.Tensor:
        """(N, orientations, cell rows, cell columns): each bin's mean gradient magnitude per cell."""
        # Centred differences, zero on the outer rows/columns (scikit-image's _hog_channel_gradient).
        # (Zeros concatenated rather than F.pad, whose exported pads are computed and lose the static shape.)
        column, row = torch.zeros_like(grey[:, :, :, :1]), torch.zeros_like(grey[:, :, :1, :])
        gx = torch.cat([column, grey[:, :, :, 2:] - grey[:, :, :, :-2], column], dim=3)
        gy = torch.cat([row, grey[:, :, 2:, :] - grey[:, :, :-2, :], row], dim=2)
        magnitude = torch.sqrt(gx * gx + gy * gy)
        # Unsigned orientation: (gx, gy) and (-gx, -gy) are one direction; keep the one with angle in [0, 180).
        flip = (gy < 0) | ((gy == 0) & (gx < 0))
        gx, gy = torch.where(flip, -gx, gx), torch.where(flip, -gy, gy)
        at_least = (gy * self.bound_cos - gx * self.bound_sin) >= 0  # (N, orientations - 1, H, W): angle >= b_i
        ones = torch.ones_like(at_least[:, :1])
        lower = torch.cat([ones, at_least], dim=1)  # angle >= b_i for i = 0 .. orientations - 1
        upper = torch.cat([at_least, torch.zeros_like(ones)], dim=1)  # angle >= b_(i+1)
        votes = (lower & ~upper).to(magnitude.dtype) * magnitude
        return F.avg_pool2d(votes, self.cell, stride=self.cell)

    def normalized_blocks(self, hist: torch.Tensor) -> torch.Tensor:
        """(N, block rows, block columns, block x block x orientations), each block L2-Hys normalised."""
        cells = hist.permute(0, 2, 3, 1)  # (N, cell rows, cell columns, orientations)
        # Constant slice bounds (the block's offset from each end), so the exported graph keeps static shapes.
        ends = [offset - self.block + 1 or None for offset in range(self.block)]
        blocks = torch.cat([cells[:, r:ends[r], c:ends[c], :] for r in range(self.block)
                            for c in range(self.block)], dim=3)
        blocks = blocks / torch.sqrt((blocks * blocks).sum(dim=3, keepdim=True) + EPS * EPS)
        blocks = blocks.clamp(max=CLIP)
        return blocks / torch.sqrt((blocks * blocks).sum(dim=3, keepdim=True) + EPS * EPS)


@register(NAME, PREPROCESS, num_classes=0, num_features=feature_count(), needs_weights=False,
          description=f"HOG, scikit-image's definition: {SIZE}x{SIZE} grey, {ORIENTATIONS} unsigned bins, {CELL} px "
          f"cells, {BLOCK}x{BLOCK}-cell blocks L2-Hys; {feature_count()} features, no weights (a classic baseline)")
def build(pretrained: bool = True, num_classes: int = 0, in_chans: int = 1) -> HOG:
    """The HOG module; ``pretrained`` is accepted (there is nothing to load), a classifier is refused."""
    if num_classes:
        raise ValueError(f"{NAME} gives features only and has no classifier; fit one on its features "
                         f"('sparkvision fit --backbone {NAME}')")
    return HOG(in_chans=in_chans).eval()
