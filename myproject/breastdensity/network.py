"""The residual CNN of the reference tutorial, in Keras 3.

Architecture (41 Conv2D layers, 2,262,660 parameters at 650x650x3)::

    input (H, W, 3)
    conv 3x3/2, 64 -> BN -> LeakyReLU(0.3) -> maxpool 3x3/2        (H/4, W/4, 64)
    stage 1: 3 bottleneck modules, inner  64, out 128, stride 1    (H/4,  W/4,  128)
    stage 2: 3 bottleneck modules, inner 128, out 256, stride 2    (H/8,  W/8,  256)
    stage 3: 3 bottleneck modules, inner 128, out 256, stride 2    (H/16, W/16, 256)
    stage 4: 3 bottleneck modules, inner 128, out 256, stride 2    (H/32, W/32, 256)
                                        ^ output named LAST_RESIDUAL_LAYER (Grad-CAM target)
    dropout 0.2 -> global average pooling -> dense 4, softmax

A bottleneck module is 1x1 (inner) -> 3x3 (inner, stride) -> 1x1 (out), each
followed by batch normalization and, but for the last, LeakyReLU; the shortcut
is the identity, or a strided 1x1 convolution + BN on the first module of a
stage ("projection shortcut"); the sum goes through LeakyReLU.

Layers are named ``stage{s}_module{m}_{part}``; the output of the last module
(``LAST_RESIDUAL_LAYER``) is what Grad-CAM targets: the reference notebook had
to guess it as ``add_12``; ``model.get_layer(LAST_RESIDUAL_LAYER)`` finds it.
"""

from __future__ import annotations

import keras
from keras import layers

from .conventions import MIN_IMAGE_SIZE

# (inner channels, output channels, stride of the first module) per stage.
STAGES = ((64, 128, 1), (128, 256, 2), (128, 256, 2), (128, 256, 2))
MODULES_PER_STAGE = 3
LEAKY_SLOPE = 0.3  # Keras' LeakyReLU default, as the reference used it
DROPOUT_RATE = 0.2
LAST_RESIDUAL_LAYER = f"stage{len(STAGES)}_module{MODULES_PER_STAGE}_out"
# The last module of the stage before: twice the resolution (H/16 x W/16), where
# the density map (``cam.DENSITY_WEIGHTS``) is taken.
DENSITY_MAP_LAYER = f"stage{len(STAGES) - 1}_module{MODULES_PER_STAGE}_out"
OUTPUT_LAYER = "predictions"
# Batch normalization's moving-average momentum. The reference had Keras'
# default, 0.99: its moving statistics average the last ~100 steps, which on
# a short CPU run (a few hundred steps) still mix in the statistics of weights
# long gone, so the inference-mode model lags the trained one (a 64-px CC_R
# model of 195 steps: validation 0.30 at 0.99, 0.70 at 0.9; with batch
# statistics the 0.99 model reached 0.78). 0.9 (PyTorch's default) follows
# within ~10 steps; on long runs the two agree. Train_ResNet --bn-momentum.
BN_MOMENTUM = 0.9
REFERENCE_BN_MOMENTUM = 0.99


def _bottleneck(
    x,
    inner: int,
    out: int,
    stride: int,
    project: bool,
    cardinality: int,
    bn_momentum: float,
    name: str,
):
    shortcut = x
    y = layers.Conv2D(inner, 1, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn1")(y)
    y = layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_relu1")(y)
    # ResNeXt-style grouped convolution when cardinality > 1 (groups=, no Lambda).
    y = layers.Conv2D(
        inner, 3, strides=stride, padding="same", groups=cardinality, name=f"{name}_conv2"
    )(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn2")(y)
    y = layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_relu2")(y)
    y = layers.Conv2D(out, 1, name=f"{name}_conv3")(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn3")(y)
    if project:
        shortcut = layers.Conv2D(out, 1, strides=stride, name=f"{name}_shortcut_conv")(x)
        shortcut = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_shortcut_bn")(
            shortcut
        )
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_out")(y)


def check_cardinality(cardinality: int) -> int:
    """``cardinality`` if it splits every grouped convolution evenly, else ValueError."""
    widths = sorted({inner for inner, _, _ in STAGES})
    if cardinality < 1 or any(width % cardinality for width in widths):
        divisors = [d for d in range(1, widths[0] + 1) if all(w % d == 0 for w in widths)]
        raise ValueError(
            f"cardinality {cardinality} must divide the grouped widths "
            f"{' and '.join(map(str, widths))}: one of {', '.join(map(str, divisors))}"
        )
    return cardinality


def build_resnet(
    image_size: int | tuple[int, int] = 650,
    num_classes: int = 4,
    cardinality: int = 1,
    channels: int = 3,
    bn_momentum: float = BN_MOMENTUM,
) -> keras.Model:
    """Build the (uncompiled) density classifier.

    Args:
        image_size: side of the square input, or (height, width); at least 64.
        num_classes: outputs of the softmax head (4 BI-RADS classes).
        cardinality: groups of the 3x3 convolutions (1 = the reference ResNet;
            must divide 64 and 128).
        channels: input channels (3: the gray image repeated, as the reference).
        bn_momentum: moving-average momentum of every batch normalization
            (see BN_MOMENTUM; REFERENCE_BN_MOMENTUM is the reference's).

    Returns:
        A keras.Model with input (None, H, W, channels) and softmax output (None, num_classes).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"input size {height}x{width} is too small: the network needs at least "
            f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels"
        )
    check_cardinality(cardinality)
    inputs = keras.Input((height, width, channels), name="image")
    x = layers.Conv2D(64, 3, strides=2, padding="same", name="input_conv")(inputs)
    x = layers.BatchNormalization(momentum=bn_momentum, name="input_bn")(x)
    x = layers.LeakyReLU(LEAKY_SLOPE, name="input_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="input_pool")(x)
    for stage, (inner, out, stride) in enumerate(STAGES, start=1):
        for module in range(1, MODULES_PER_STAGE + 1):
            first = module == 1
            x = _bottleneck(
                x,
                inner,
                out,
                stride=stride if first else 1,
                project=first,
                cardinality=cardinality,
                bn_momentum=bn_momentum,
                name=f"stage{stage}_module{module}",
            )
    x = layers.Dropout(DROPOUT_RATE, name="dropout")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    # float32 output even under a mixed-precision policy (stable softmax).
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name="breast_density_resnet")
