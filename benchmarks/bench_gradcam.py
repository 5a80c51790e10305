"""Stage 4 speed: Grad-CAM maps/s against model.predict images/s on the same images and batch.

Arms, all on the last residual module of the same network:
* ``model.predict`` (the reference: forward pass only),
* ``breastdensity.cam.GradCam`` (compiled, batched),
* tf-keras-vis ``Gradcam`` with its defaults, and with ``expand_cam=False``.
Goal: GradCam / predict >= 0.8.

    python benchmarks/bench_gradcam.py --img-size 650 --images 32 --batch-size 4
"""

from __future__ import annotations

import argparse

from _common import Timer

from breastdensity.quiet import quiet_tensorflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img-size", type=int, default=650)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    quiet_tensorflow()  # after the arguments: --help answers at once

    import keras
    import numpy as np
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from breastdensity.cam import GradCam
    from breastdensity.network import LAST_RESIDUAL_LAYER, build_resnet

    keras.utils.set_random_seed(0)
    model = build_resnet(args.img_size)
    images = (
        np.random.default_rng(0)
        .normal(size=(args.images, args.img_size, args.img_size, 3))
        .astype("float32")
    )
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]

    def rate(function) -> float:
        function(batches[0])  # warm up (tracing, cloning)
        with Timer() as timer:
            for batch in batches:
                function(batch)
        return len(images) / timer.seconds

    predict = rate(lambda b: model.predict(b, batch_size=args.batch_size, verbose=0))
    grad_cam = GradCam(model)  # compiled once for the model
    ours = rate(grad_cam)
    library = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    options = {"penultimate_layer": LAST_RESIDUAL_LAYER, "seek_penultimate_conv_layer": False}
    vis_default = rate(lambda b: library(CategoricalScore([0] * len(b)), b, **options))
    vis_small = rate(
        lambda b: library(CategoricalScore([0] * len(b)), b, expand_cam=False, **options)
    )
    print(f"Grad-CAM at {args.img_size} px, batch {args.batch_size}, {args.images} images")
    print(f"  model.predict                     : {predict:6.2f} images/s")
    print(
        f"  breastdensity.cam.GradCam         : {ours:6.2f} maps/s   ratio {ours / predict:.3f} (goal >= 0.8)"
    )
    print(
        f"  tf-keras-vis Gradcam (defaults)   : {vis_default:6.2f} maps/s   ratio {vis_default / predict:.3f}"
    )
    print(
        f"  tf-keras-vis Gradcam (no expand)  : {vis_small:6.2f} maps/s   ratio {vis_small / predict:.3f}"
    )


if __name__ == "__main__":
    main()
