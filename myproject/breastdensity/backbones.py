"""The networks a stage can train: the reference ResNet, EfficientNet and Vision Transformers.

``build_backbone(name, image_size, **options)`` returns an uncompiled ``keras.Model``
that carries in itself everything the later stages need, whatever the backbone::

    input "image"           (None, H, W, 3) float32, what preprocessing.normalize makes of a
                            gray image: x/255 minus the image's own mean, repeated to 3 channels
    output "predictions"    (None, 4) softmax over conventions.CLASSES (a float32 Dense layer)
    the layer to explain    explain_layer_name(model): a (None, h, w, K) map that Grad-CAM
                            can weigh; the layer named EXPLAIN_LAYER ("explain_here"), or, in
                            the reference ResNet, network.LAST_RESIDUAL_LAYER

These are layer names and shapes, so a ``.keras`` file keeps them: a stage reads the input
size from ``model.input_shape`` and the layer to explain with ``explain_layer_name``.

Backbones (parameters with 4 classes)::

    name          input        what                                                parameters
    resnet        any >= 64    network.build_resnet, unchanged (the reference)      2,262,660 at 650
    efficientnet  any >= 32    keras.applications EfficientNetB0 (variant="B0".."B7")
                                                                                    4,054,695 at 224
    vit           224 (/32)    ViT-B/32: 12 blocks, width 768, MLP 3072, 12 heads  87,458,308 at 224
                               (the thesis' "about 86 M" is ViT-B/16's usual figure; patches of
                               32 make the patch embedding 2.4 M instead of 0.6 M)
    vit-tiny      128 (/16)    4 blocks, width 128, MLP 256, 4 heads                  637,572 at 128

Why the EfficientNet has one more layer in front. keras.applications' EfficientNet expects
RGB in 0-255 and rescales it inside (1/255, then a Normalization layer that holds the
ImageNet mean and variance once ImageNet weights are loaded, the identity without). The
project feeds zero-mean images in about [-0.5, 0.5], so a ``Rescaling(255, offset=127.5)``
layer ("to_efficientnet_range") maps them back to 0-255 around mid-gray; the stages feed
every backbone the same way.

Why the ViT is written here in Keras layers. keras-hub's ``ViTBackbone`` runs its attention
inside one nested encoder layer and never returns the attention probabilities, which the
transformer explanations (``explain.transformer``) need from every block. Here each
block's ``MultiHeadAttention`` returns them as a second output, with nothing else changed:
a pre-norm block, as in Dosovitskiy et al. (2021)::

    image (H, W, 3) -> Conv2D(width, patch, stride patch)        (H/p, W/p, width)
      -> (N, width) patch tokens, N = (H/p)(W/p)
      -> class token first, learned positions added               (1 + N, width)
      -> blocks 1..L:  x += MHA(LN(x));  x += MLP(LN(x))          (1 + N, width)
         (in the last block, LN(x)'s patch tokens pass unchanged through the
          (H/p, W/p, width) grid named "explain_here": Grad-CAM's target; and only
          the class token is computed, the one the head reads: (1, width))
      -> LN(class token) -> dropout -> Dense(4, softmax)          (4,)

Only ``ClassTokenAndPositions`` is a custom layer; it is registered with Keras, so a saved
ViT loads in safe mode once this module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers, ops

from .conventions import BACKBONE_IMAGE_SIZES, BACKBONES, NUM_CLASSES, VIT_PATCH_SIZES
from .network import LAST_RESIDUAL_LAYER, OUTPUT_LAYER, build_resnet

# The layer whose (None, h, w, K) output an explanation of any backbone weighs.
EXPLAIN_LAYER = "explain_here"
INPUT_NAME = "image"
EFFICIENTNET_VARIANTS = tuple(f"B{size}" for size in range(8))
# Where keras.applications downloads ImageNet weights from and keeps them (KERAS_HOME).
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/keras-applications/efficientnet{variant}_notop.h5"
)
KERAS_CACHE = "~/.keras/models"


@dataclass(frozen=True)
class ViTConfig:
    patch_size: int
    num_layers: int
    width: int  # token dimension
    mlp_width: int
    num_heads: int


VIT_CONFIGS = {
    # ViT-B/32 (Dosovitskiy et al., 2021), as the thesis describes it.
    "vit": ViTConfig(
        patch_size=VIT_PATCH_SIZES["vit"], num_layers=12, width=768, mlp_width=3072, num_heads=12
    ),
    # Small enough to train on a 2-core CPU at 128 px: 8 x 8 patches, 637,572 parameters.
    "vit-tiny": ViTConfig(
        patch_size=VIT_PATCH_SIZES["vit-tiny"], num_layers=4, width=128, mlp_width=256, num_heads=4
    ),
}
# the sizes the configurations are meant for
VIT_IMAGE_SIZES = {name: BACKBONE_IMAGE_SIZES[name] for name in VIT_CONFIGS}


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights were asked for and cannot be had here; the message says what to do."""


@keras.saving.register_keras_serializable(package="breastdensity")
class ClassTokenAndPositions(keras.layers.Layer):
    """(B, N, D) patch tokens -> (B, 1 + N, D): a learned class token in front, learned positions added."""

    def build(self, input_shape):
        num_tokens, width = input_shape[1] + 1, input_shape[2]
        self.class_token = self.add_weight(
            shape=(1, 1, width), initializer="zeros", name="class_token"
        )
        self.positions = self.add_weight(
            shape=(1, num_tokens, width),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="positions",
        )

    def call(self, patches):
        batch, width = ops.shape(patches)[0], ops.shape(patches)[2]
        class_token = ops.broadcast_to(ops.cast(self.class_token, patches.dtype), (batch, 1, width))
        return ops.concatenate([class_token, patches], axis=1) + ops.cast(
            self.positions, patches.dtype
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 1, input_shape[2])


def _square(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def _classifier_head(features, num_classes: int, dropout: float):
    features = layers.Dropout(dropout, name="head_dropout")(features)
    # float32 output even under a mixed-precision policy (stable softmax), as the ResNet.
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_LAYER)(
        features
    )


def build_efficientnet(
    image_size: int | tuple[int, int] = 224,
    num_classes: int = NUM_CLASSES,
    variant: str = "B0",
    weights: str | None = None,
    dropout: float = 0.2,
) -> keras.Model:
    """keras.applications' EfficientNet with the project's input and a 4-class head.

    Args:
        image_size: side of the square input, or (height, width); at least 32.
        num_classes: outputs of the softmax head.
        variant: "B0" .. "B7".
        weights: None (random); "imagenet" (keras.applications downloads them, or finds
            them in its cache ~/.keras/models; without either it raises
            PretrainedWeightsError saying what to do); or the path of the feature
            extractor's weights as keras.applications saves them (the downloaded
            ``efficientnetb0_notop.h5``, or ``save_weights`` of
            ``EfficientNetB0(include_top=False)``), loaded the same way.
        dropout: before the dense head (keras.applications' B0 uses 0.2).

    Returns:
        (None, H, W, 3) -> (None, num_classes); EXPLAIN_LAYER is the last feature map
        (H/32, W/32, 1280 for B0).
    """
    variant = variant.upper()
    if variant not in EFFICIENTNET_VARIANTS:
        raise ValueError(
            f"EfficientNet variant {variant!r}: one of {', '.join(EFFICIENTNET_VARIANTS)}"
        )
    if weights not in (None, "imagenet"):
        weights = Path(weights)
        if not weights.is_file():
            raise PretrainedWeightsError(
                f"{weights}: no such file; give the EfficientNet{variant} feature extractor's "
                "weights file (efficientnet" + variant.lower() + "_notop.h5 as keras.applications "
                "downloads it), or 'imagenet'"
            )
    height, width = _square(image_size)
    inputs = keras.Input((height, width, 3), name=INPUT_NAME)
    # project convention (x/255 minus its mean) -> keras.applications' 0-255
    x = layers.Rescaling(255.0, offset=127.5, name="to_efficientnet_range")(inputs)
    builder = getattr(keras.applications, f"EfficientNet{variant}")
    try:
        # input_tensor: the base's layers join this model (no nested model), so
        # model.get_layer finds every one of them.
        base = builder(
            include_top=False,
            weights=weights if weights in (None, "imagenet") else str(weights),
            input_tensor=x,
        )
    except Exception as error:  # keras raises a bare Exception when the download fails
        if isinstance(weights, Path):
            raise PretrainedWeightsError(
                f"{weights}: not the weights of EfficientNet{variant}'s feature extractor "
                f"({type(error).__name__}: {error})"
            ) from error
        if weights != "imagenet":
            raise
        url = IMAGENET_WEIGHTS_URL.format(variant=variant.lower())
        raise PretrainedWeightsError(
            f"could not get the ImageNet weights of EfficientNet{variant} ({error}). "
            f"Use --pretrained imagenet where downloads work (Colab, a GPU node); or download "
            f"{url} there and give its path here (--pretrained path/to/{url.rsplit('/', 1)[1]}), "
            f"or copy it into {KERAS_CACHE} (Keras then finds it offline); or train without "
            "--pretrained."
        ) from error
    features = layers.Identity(name=EXPLAIN_LAYER)(base.output)  # (None, h, w, 1280) for B0
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    outputs = _classifier_head(pooled, num_classes, dropout)
    return keras.Model(inputs, outputs, name=f"breast_density_efficientnet{variant.lower()}")


def _as_patch_grid(tokens, grid: tuple[int, int], width: int):
    """(B, 1 + N, D) tokens -> the same tokens, the patches passing through the
    (B, H/p, W/p, D) grid layer EXPLAIN_LAYER (identity in value: a map Grad-CAM can weigh)."""
    num_patches = grid[0] * grid[1]
    class_token = layers.Cropping1D((0, num_patches), name="explain_class_token")(tokens)
    patches = layers.Cropping1D((1, 0), name="explain_patch_tokens")(tokens)  # (B, N, D)
    patch_grid = layers.Reshape((*grid, width), name=EXPLAIN_LAYER)(patches)
    patches = layers.Reshape((num_patches, width), name="explain_patch_tokens_back")(patch_grid)
    return layers.Concatenate(axis=1, name="explain_tokens")([class_token, patches])


def _transformer_block(tokens, config: ViTConfig, dropout: float, name: str, grid=None):
    """Pre-norm block: x += MHA(LN(x)); x += MLP(LN(x)). (B, T, D) -> (B, T, D).

    grid: (H/p, W/p) for the last block, which returns the class token alone, (B, 1, D): its
    normalised patch tokens go through EXPLAIN_LAYER, and only the class token is queried,
    since its patch outputs never reach the head (the class token is the same as with every
    token queried; a quarter less work in a 4-block ViT, forward and backward).
    """
    x = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(tokens)
    query = x
    if grid is not None:
        # After the normalisation, not before: the patch tokens reach the head only through
        # it, and it ignores their scale, so before it the gradient is orthogonal to each
        # token (grad . x = 0) and Grad-CAM's sum over channels has nothing to weigh.
        x = _as_patch_grid(x, grid, config.width)
        num_patches = grid[0] * grid[1]
        query = layers.Cropping1D((0, num_patches), name=f"{name}_class_query")(x)  # (B, 1, D)
        tokens = layers.Cropping1D((0, num_patches), name=f"{name}_class_token")(tokens)
    # return_attention_scores: the (B, heads, queries, T) probabilities become a tensor of
    # the graph, reachable from outside (explain.transformer), and are the ones used.
    attended, _ = layers.MultiHeadAttention(
        config.num_heads,
        key_dim=config.width // config.num_heads,
        dropout=dropout,
        name=f"{name}_attention",
    )(query, x, return_attention_scores=True)
    tokens = layers.Add(name=f"{name}_add1")([tokens, attended])
    x = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(tokens)
    x = layers.Dense(config.mlp_width, activation="gelu", name=f"{name}_mlp1")(x)
    x = layers.Dense(config.width, name=f"{name}_mlp2")(x)
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.Add(name=f"{name}_add2")([tokens, x])


def build_vit(
    image_size: int | tuple[int, int] = 224,
    num_classes: int = NUM_CLASSES,
    config: str | ViTConfig = "vit",
    dropout: float = 0.0,
) -> keras.Model:
    """A Vision Transformer classifier (see the module docstring for the layout).

    Args:
        image_size: side of the square input, or (height, width); a multiple of the patch.
        num_classes: outputs of the softmax head.
        config: "vit" (ViT-B/32), "vit-tiny", or a ViTConfig.
        dropout: in the attention, after each MLP and before the head.

    Returns:
        (None, H, W, 3) -> (None, num_classes); EXPLAIN_LAYER is the (H/p, W/p, width) grid
        of the last block's normalised patch tokens, the input of its attention.
    """
    if isinstance(config, str):
        config = VIT_CONFIGS[config]
    height, width = _square(image_size)
    patch = config.patch_size
    if height % patch or width % patch:
        raise ValueError(
            f"input {height}x{width} is not a whole number of {patch}x{patch} patches: "
            f"use a multiple of {patch} (e.g. {max(patch, height // patch * patch)})"
        )
    if config.width % config.num_heads:
        raise ValueError(f"width {config.width} must split evenly into {config.num_heads} heads")
    grid = (height // patch, width // patch)
    num_patches = grid[0] * grid[1]
    inputs = keras.Input((height, width, 3), name=INPUT_NAME)
    x = layers.Conv2D(config.width, patch, strides=patch, name="patch_embedding")(inputs)
    x = layers.Reshape((num_patches, config.width), name="patch_tokens")(x)  # (N, D)
    tokens = ClassTokenAndPositions(name="class_token_and_positions")(x)  # (1 + N, D)
    for block in range(1, config.num_layers + 1):
        last = block == config.num_layers
        tokens = _transformer_block(
            tokens, config, dropout, name=f"block{block}", grid=grid if last else None
        )
    class_token = layers.Flatten(name="class_features")(tokens)  # (B, 1, D) -> (B, D)
    class_token = layers.LayerNormalization(epsilon=1e-6, name="final_norm")(class_token)
    outputs = _classifier_head(class_token, num_classes, dropout)
    name = "vit_b32" if config == VIT_CONFIGS["vit"] else "vit"
    return keras.Model(inputs, outputs, name=f"breast_density_{name}")


def build_backbone(
    name: str,
    image_size: int | tuple[int, int],
    num_classes: int = NUM_CLASSES,
    weights: str | Path | None = None,
    pretrained: str | Path | None = None,
    **options,
) -> keras.Model:
    """The density classifier with the backbone ``name``.

    Args:
        name: one of BACKBONES.
        image_size: side of the square input, or (height, width).
        num_classes: outputs of the softmax head.
        weights: None (as ``pretrained`` leaves them), "imagenet" (the same as
            ``pretrained="imagenet"``), or the path of a ``.weights.h5`` file saved
            (``model.save_weights``) from a model built with the same arguments, loaded
            into the whole model.
        pretrained: EfficientNet only: "imagenet", or the path of a keras.applications
            weights file of the feature extractor (see build_efficientnet); None: random.
        **options: passed on: resnet ``cardinality``, ``bn_momentum``; efficientnet
            ``variant``, ``dropout``; vit and vit-tiny ``dropout``, ``config`` (a ViTConfig
            in place of the named one).

    Returns:
        An uncompiled keras.Model with the contract of the module docstring.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: one of {', '.join(BACKBONES)}")
    if weights == "imagenet":
        weights, pretrained = None, "imagenet"
    file = None if weights is None else Path(weights)
    if file is not None and not file.is_file():
        raise FileNotFoundError(f"{file}: no such weights file")
    if pretrained is not None and name != "efficientnet":
        raise PretrainedWeightsError(
            f"there are no ImageNet weights for the {name} backbone here: use "
            "--backbone efficientnet with --pretrained, or train without --pretrained"
        )
    if name == "resnet":
        model = build_resnet(image_size, num_classes, **options)
    elif name == "efficientnet":
        model = build_efficientnet(image_size, num_classes, weights=pretrained, **options)
    else:
        options.setdefault("config", name)
        model = build_vit(image_size, num_classes, **options)
    if file is not None:
        model.load_weights(file)
    return model


def explain_layer_name(model: keras.Model) -> str:
    """The name of the layer whose (None, h, w, K) output explanations of ``model`` weigh.

    EXPLAIN_LAYER in every model of build_backbone but the reference ResNet, whose
    layer (and that of every ResNet file saved before backbones existed) is
    network.LAST_RESIDUAL_LAYER.
    """
    names = {layer.name for layer in model.layers}
    for candidate in (EXPLAIN_LAYER, LAST_RESIDUAL_LAYER):
        if candidate in names:
            return candidate
    raise ValueError(
        f"model {model.name} has no layer named {EXPLAIN_LAYER!r} or {LAST_RESIDUAL_LAYER!r}: "
        "build it with breastdensity.backbones.build_backbone, or name the layer to explain "
        f"{EXPLAIN_LAYER!r}"
    )
