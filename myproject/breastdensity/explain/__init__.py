"""The explanation wing: how a map is made, and whether it deserves trust.

* ``methods``: every explanation method behind one ``Explainer`` (Grad-CAM and its
  relatives, occlusion, and the gradient methods of ``attributions``);
* ``attributions``: the one gradient attribution engine (saliency, SmoothGrad,
  Integrated Gradients, Expected Gradients, deconvolution), batched and compiled;
* ``regions``: XRAI-style region maps;
* ``scoring``: maps against dense-tissue masks, fidelity, sanity and robustness;
* ``comparison``: the LaTIM poster's comparison of gradient attributions.

It builds on the tutorial core (``cam``, ``preprocessing``, ``network``, ...);
no stage of the tutorial needs it except stage 4's method comparison.
"""
