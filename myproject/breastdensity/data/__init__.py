"""The data wing: where images and labels come from, before stage 1 trains on them.

- Synthetic phantoms with exact dense-tissue masks: ``phantom_model`` (image
  formation and the sampled parameter ranges), ``phantoms`` (datasets in the
  reference layout with their manifest), ``phantom_plots`` (a preview grid),
  ``raw_phantoms`` (the same phantoms as raw DICOMs with true masks, to test
  stage 0).
- Stage 0 for real mammograms: reading and normalising one image, and the
  public datasets' label tables.

These modules use the package's foundation (conventions, files, preprocessing,
network), never a stage's module.
"""
