"""Explanations made for the Vision Transformer: Grad-CAM on patch tokens, attention rollout, Chefer.

A ViT of ``backbones.build_vit`` turns an (H, W, 3) image into T = 1 + N tokens: a class
token, then one token per p x p patch (row by row, N = H/p * W/p). Each of its L blocks
mixes the tokens with attention probabilities A_l of shape (heads, T, T); the head reads
only the class token, so the last block computes that token alone and its A_L is
(heads, 1, T), the class token's row (the formulas below need no other row of it). Three ways to turn that into a map over the patch grid (H/p, W/p):

Grad-CAM on the patch tokens (as ``cam.GradCam`` on a convolutional map). The target is
the (H/p, W/p, D) grid of the last block's patch tokens after its LayerNorm, the input of
its attention (the layer ``backbones.EXPLAIN_LAYER``; pytorch-grad-cam's choice for ViTs).
Before the LayerNorm, which ignores each token's scale, the gradient is orthogonal to the
token (grad . X = 0), and after the block the patch tokens no longer reach the head::

    alpha_k = mean over patches of d y_c / d X_k          (y_c: class c's pre-softmax score)
    map     = ReLU( sum_k alpha_k X_k )                   (X: the normalised patch tokens)

Attention rollout (Abnar & Zuidema, 2020): how much of the class token's information
comes from each patch if attention were the only mixing, the residual counted as the
identity; class-agnostic::

    Â_l = mean over heads of A_l + I, each row divided by its sum     (T, T)
    R   = Â_L ... Â_2 Â_1                                            (T, T)
    map = R[class token, patches]

Gradient-weighted relevance (Chefer, Gur & Wolf, 2021, "Generic attention-model
explainability", the gradient x attention rule): attention weighed by how much the class
score would change with it, negative contributions dropped; class-specific::

    R = I
    for l = 1 .. L:  R = R + mean over heads of ReLU(dy_c/dA_l * A_l) @ R
    map = R[class token, patches]

Only the class token's row of R is needed, and R is a product, R = (I + W_L) ... (I + W_1)
with W_l the head mean above, so ``relevance_row`` takes that row from the last block down,
e^T (I + W_L), then v <- v + v W_l: L vector-matrix products in place of matrix products.

``TransformerExplainer(model)`` compiles each method once for the model: every call is one
forward pass (rollout) or one forward and one backward pass (Grad-CAM, Chefer) for the
whole batch; Chefer's under XLA when the ViT is narrow (``XLA_MAX_WIDTH``). The short
functions ``rollout_matrix``, ``relevance_matrix`` and ``relevance_row`` are the formulas
above, used by the compiled ones and tested on their own.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from ..backbones import EXPLAIN_LAYER
from ..network import OUTPUT_LAYER

EPSILON = 1e-7
CLASS_TOKEN = 0  # the class token is the first token; patch tokens follow, row by row
# Chefer's pass runs under XLA for ViTs whose tokens are at most this wide (see
# TransformerExplainer.__init__): vit-tiny (128) yes, ViT-B/32 (768) no. Measured on the
# 2-core CPU: XLA clearly faster at width 128, about even at 256, slower from 384 on.
XLA_MAX_WIDTH = 256


def rollout_matrix(attentions) -> tf.Tensor:
    """Attention rollout of L attention tensors (B, heads, Q, T), first block first.

    A block's Q queries are its first Q tokens: Q = T in every block but the last of a ViT
    of ``backbones``, which queries the class token alone (Q = 1).

    Returns:
        (B, Q_L, T) float32: row i says how much of token i's output comes from each input
        token.
    """
    rollout = None
    for attention in attentions:
        attention = tf.reduce_mean(tf.cast(attention, tf.float32), axis=1)  # (B, Q, T)
        queries, tokens = tf.shape(attention)[1], tf.shape(attention)[2]
        attention = attention + tf.eye(queries, tokens)  # the residual
        attention = attention / tf.reduce_sum(attention, axis=-1, keepdims=True)
        rollout = attention if rollout is None else tf.matmul(attention, rollout)
    return rollout


def head_mean_weighted(attention, gradient) -> tf.Tensor:
    """Mean over heads of ReLU(dy/dA * A): (B, heads, Q, T) twice -> (B, Q, T) float32."""
    weighted = tf.nn.relu(tf.cast(gradient, tf.float32) * tf.cast(attention, tf.float32))
    return tf.reduce_mean(weighted, axis=1)


def relevance_matrix(attentions, gradients) -> tf.Tensor:
    """Chefer et al.'s relevance from L attentions and their gradients, (B, heads, Q, T) each.

    Returns:
        (B, Q_L, T) float32: row i is the relevance of each input token for output token i.
    """
    relevance = None
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = head_mean_weighted(attention, gradient)  # (B, Q, T)
        queries, tokens = tf.shape(weighted)[1], tf.shape(weighted)[2]
        if relevance is None:  # R = I, so I + weighted @ I
            relevance = tf.eye(queries, tokens) + weighted
        else:  # the rows of the Q queried tokens
            relevance = relevance[:, :queries] + tf.matmul(weighted, relevance)
    return relevance


def relevance_row(attentions, gradients, row: int = CLASS_TOKEN) -> tf.Tensor:
    """Row ``row`` of ``relevance_matrix(attentions, gradients)``, (B, T) float32.

    The same product of the (I + W_l), associated from the other end: from the last block
    down, a row vector times each (T, T) matrix, so no (T, T) x (T, T) product is needed.
    ``row`` must be one of the last block's queries (the class token in our ViTs).
    """
    weighted = [head_mean_weighted(a, g) for a, g in zip(attentions, gradients, strict=True)]
    tokens = tf.shape(weighted[-1])[2]
    vector = tf.one_hot(row, tokens) + weighted[-1][:, row]  # e^T (I + W_L), (B, T)
    for matrix in reversed(weighted[:-1]):  # v <- v (I + W_l), W_l (B, T, T)
        vector = vector + tf.linalg.matvec(matrix, vector, transpose_a=True)
    return vector


@dataclass
class TokenMaps:
    grid: np.ndarray  # (B, H/p, W/p) the method's values per patch, unscaled
    maps: np.ndarray  # (B, H, W) grid resized (bilinear) to the input, scaled to [0, 1] per image
    classes: np.ndarray  # (B,) class explained; -1 for rollout, which explains no class
    probabilities: np.ndarray  # (B, 4) softmax of the model


def attention_layers(model: keras.Model) -> list[keras.layers.MultiHeadAttention]:
    """The model's attention layers, first block first (the order of ``model.layers``)."""
    found = [layer for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    if not found:
        raise ValueError(
            f"model {model.name} has no MultiHeadAttention layer: transformer explanations "
            "need a ViT of breastdensity.backbones (build_backbone('vit' or 'vit-tiny', ...))"
        )
    return found


class TransformerExplainer:
    """Grad-CAM, attention rollout and Chefer relevance of one ViT, compiled once.

    ``explainer = TransformerExplainer(model)``, then for a batch ``images``
    (B, H, W, 3) float32, preprocessed as for the model:
    ``explainer.grad_cam(images, classes)``, ``explainer.rollout(images)``,
    ``explainer.chefer(images, classes)`` -> TokenMaps. ``classes``: (B,) class
    indices, None for the predicted ones.
    """

    def __init__(self, model: keras.Model):
        # The attention probabilities are each layer's second output: the tensors the
        # block multiplies its values by, so gradients taken with respect to them are dy/dA.
        attentions = [layer.output[1] for layer in attention_layers(model)]
        self.input_size = tuple(int(s) for s in model.input_shape[1:3])
        grid = model.get_layer(EXPLAIN_LAYER).output  # (None, H/p, W/p, D)
        self.grid_size = tuple(int(s) for s in grid.shape[1:3])
        head = model.get_layer(OUTPUT_LAYER)
        if not (
            isinstance(head, keras.layers.Dense) and head.activation is keras.activations.softmax
        ):
            raise ValueError(f"model {model.name}: {OUTPUT_LAYER!r} must be a softmax Dense layer")
        # (B, heads, Q, T) x L, the grid, and the head's input (its pre-softmax scores below)
        self._parts = keras.Model(model.input, [*attentions, grid, head.input])
        self._head = head
        image_spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        class_spec = tf.TensorSpec((None,), tf.int32)
        self._grad_cam = tf.function(self._grad_cam_graph, input_signature=[image_spec, class_spec])
        self._rollout = tf.function(self._rollout_graph, input_signature=[image_spec])
        # Chefer's backward pass crosses every block: on a narrow ViT mostly small
        # element-wise ops (the gradients of LayerNorm, GELU, softmax), which XLA fuses
        # (vit-tiny: about 1.4x a forward pass, 2.1x without); on a wide one the matrix
        # products dominate, and on a CPU XLA's are slower than TensorFlow's own (ViT-B/32:
        # its forward pass alone 1.5-2x slower under XLA).
        self._chefer_xla = int(grid.shape[-1]) <= XLA_MAX_WIDTH
        self._chefer = tf.function(
            self._chefer_graph,
            input_signature=[image_spec, class_spec],
            jit_compile=self._chefer_xla,
        )

    # -- the compiled parts: (B, H, W, 3) in, (B, h, w) grid, (B, H, W) maps, classes, probabilities

    def _forward(self, images):
        *attentions, grid, features = self._parts(images, training=False)
        features = tf.cast(features, tf.float32)
        scores = tf.matmul(features, self._head.kernel) + self._head.bias  # (B, 4), pre-softmax
        return attentions, grid, scores

    @staticmethod
    def _target(scores, classes):
        chosen = tf.where(classes < 0, tf.argmax(scores, axis=-1, output_type=tf.int32), classes)
        return tf.reduce_sum(scores * tf.one_hot(chosen, tf.shape(scores)[-1]), axis=-1), chosen

    def _finish(self, grid, chosen, scores):
        maps = tf.image.resize(grid[..., None], self.input_size, method="bilinear")[..., 0]
        low = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
        high = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
        return grid, (maps - low) / (high - low + EPSILON), chosen, tf.nn.softmax(scores)

    def _patch_row(self, matrix):
        """(B, Q, T) -> (B, H/p, W/p): the class token's row over the patches."""
        return tf.reshape(matrix[:, CLASS_TOKEN, 1:], (-1, *self.grid_size))

    def _grad_cam_graph(self, images, classes):
        with tf.GradientTape() as tape:
            _, grid, scores = self._forward(images)
            target, chosen = self._target(scores, classes)
        gradients = tf.cast(tape.gradient(target, grid), tf.float32)  # (B, h, w, D)
        alphas = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(tf.cast(grid, tf.float32) * alphas, axis=-1))
        return self._finish(cams, chosen, scores)

    def _rollout_graph(self, images):
        attentions, _, scores = self._forward(images)
        chosen = -tf.ones(tf.shape(scores)[:1], tf.int32)
        return self._finish(self._patch_row(rollout_matrix(attentions)), chosen, scores)

    def _chefer_graph(self, images, classes):
        with tf.GradientTape() as tape:
            attentions, _, scores = self._forward(images)
            target, chosen = self._target(scores, classes)
        gradients = tape.gradient(target, attentions)  # one backward pass for every block
        row = relevance_row(attentions, gradients)  # (B, T), the class token's
        return self._finish(tf.reshape(row[:, 1:], (-1, *self.grid_size)), chosen, scores)

    # -- the calls

    @staticmethod
    def _classes(images, classes) -> tf.Tensor:
        batch = int(images.shape[0])
        if classes is None:
            return tf.fill((batch,), -1)  # -1: the predicted class
        return tf.convert_to_tensor(np.asarray(classes, np.int32).reshape(batch))

    def grad_cam(self, images, classes=None) -> TokenMaps:
        """Grad-CAM of ``classes`` (None: the predicted ones) on the last block's patch tokens."""
        images = tf.convert_to_tensor(images, tf.float32)
        return TokenMaps(
            *(t.numpy() for t in self._grad_cam(images, self._classes(images, classes)))
        )

    def rollout(self, images) -> TokenMaps:
        """Attention rollout: the class token's row over the patches (no class: ``classes`` -1)."""
        return TokenMaps(
            *(t.numpy() for t in self._rollout(tf.convert_to_tensor(images, tf.float32)))
        )

    def chefer(self, images, classes=None) -> TokenMaps:
        """Chefer et al.'s relevance of ``classes`` (None: the predicted ones) over the patches."""
        images = tf.convert_to_tensor(images, tf.float32)
        classes = self._classes(images, classes)
        batch = int(images.shape[0])
        if not self._chefer_xla:
            return TokenMaps(*(t.numpy() for t in self._chefer(images, classes)))
        # XLA compiles once per batch size: padded to a power of two, any batch size costs
        # at most a few compilations. The images do not mix, so the padding changes nothing.
        padding = (1 << max(batch - 1, 0).bit_length()) - batch
        images = tf.pad(images, [[0, padding], [0, 0], [0, 0], [0, 0]])
        classes = tf.pad(classes, [[0, padding]], constant_values=-1)
        return TokenMaps(*(t.numpy()[:batch] for t in self._chefer(images, classes)))


_EXPLAINERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def explainer_for(model: keras.Model) -> TransformerExplainer:
    """The model's TransformerExplainer, made on first use and reused (no tracing again)."""
    if model not in _EXPLAINERS:
        _EXPLAINERS[model] = TransformerExplainer(model)
    return _EXPLAINERS[model]
