"""The names of the run's model choices (heads, scorings) and the defaults among them (no torch: the CLI reads
them for ``--help``)."""

UNTRAINED = "untrained"
"""The head choice (``--head``, the bundle's ``head`` key) for a fresh, untrained head."""
SCORINGS = ("visualad", "selfsim", "combined")
"""What one image's map sums: the head's patch scores, self-similarity, or both (a head records one)."""
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Autocast of the model's forward pass (:func:`~visualad_med.model.devices.resolve_precision`)."""
MAP_REFERENCES = ("none", "body")
"""The map as the method makes it, or minus its median over the image's body
(:mod:`~visualad_med.model.body_reference`)."""

COHORT_SCORINGS = ("mutual", "visualad+mutual")
"""Scorings that compare an image with other images (a cohort or a reference bank)."""
DEFAULT_IMAGE_SCORING = "visualad+mutual"
"""What 2D images of one kind do when no scoring is asked for (evaluate's classes, ``predict --cohort``): each
against the others, fused with the head (see the model card's suite)."""
DEFAULT_VOLUME_SCORING = "mutual"
"""What a volume run of at least two scans does when no scoring is asked for (see the model card's suite)."""
DEPTHS = ("patch", "none")
"""Smoothing of a volume's patch scores across slices: Gaussian with sigma half the in-plane patch footprint
(mm), or none."""
INTENSITY_TERMS = ("vouched", "none")
"""Volume cohorts: the intensity term fused with the maps as the run's data vouch for it
(:mod:`~visualad_med.model.intensity`), or not at all."""
MATCHES = ("anatomy", "position")
"""How a volume slice's candidates are chosen: by global descriptor, or by normalised slice position."""
