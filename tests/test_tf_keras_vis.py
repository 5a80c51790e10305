"""tf-keras-vis 0.8.7 works with Keras 3 on our network (the CAM stage relies on it)."""

import numpy as np
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

from breastdensity.network import LAST_RESIDUAL_LAYER, build_resnet


def test_gradcam_on_a_tiny_model(rng):
    model = build_resnet(64)
    images = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    maps = gradcam(CategoricalScore([0, 3]), images, penultimate_layer=LAST_RESIDUAL_LAYER)
    assert maps.shape == (2, 64, 64)
    assert np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    # the original model keeps its softmax (clone=True)
    np.testing.assert_allclose(model.predict(images, verbose=0).sum(axis=1), 1, atol=1e-5)
