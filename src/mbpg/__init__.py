"""mbpg: model-based policy gradients, with the gradient type (MFG, FMG, MVG) as a swappable part."""

__version__ = "0.1.0"
