"""Canonicalisation: one convention for the models, whatever the vendor wrote.

``mammo``: photometric interpretation, intensity scale, orientation (chest wall and superior side),
breast segmentation, crop and physical scale. ``ldct``: series selection, axis-aligned reorientation
to one patient orientation, refusal of tilted or oblique stacks. What cannot be read correctly is
refused with a reason (``RejectedInstance`` per image, ``StudyFailed`` per series), never guessed.
"""
