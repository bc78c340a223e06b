"""The built-in plugin of prior backbones: registers latentbridge's block-causal DiT (`dit`) through the public hook."""

from latentbridge.hookspecs import hookimpl
from latentbridge.prior.dit import BlockCausalDiT


@hookimpl
def latentbridge_register_priors(register):
    register(BlockCausalDiT)
