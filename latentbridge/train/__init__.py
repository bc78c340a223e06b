"""Training: the flow-matching objective of the prior (and, as they land, the trainer's stages)."""

from latentbridge.train.objective import prior_loss

__all__ = ["prior_loss"]
