"""Image classification with sequence mixers over patches; importing it registers the timm models."""
from apps.vision import variants  # noqa: F401  (registers seqmix_* with timm)
