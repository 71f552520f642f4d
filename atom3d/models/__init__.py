"""Networks and model artifacts (``atom3d.models.unet``, ``atom3d.models.artifact``)."""

#: Packaged model loaded when no model is named (``atom3d/models/ceo2-110/``).
DEFAULT_MODEL = "ceo2-110"
