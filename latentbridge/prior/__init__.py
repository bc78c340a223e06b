"""The block-causal DiT prior: embeddings, attention with the two-copy mask, KV cache.

It imports neither the flow code nor any codec (ARCHITECTURE.md §2).
"""

from latentbridge.prior.backbone import NoOptions, PriorBackbone
from latentbridge.prior.cache import KVCache
from latentbridge.prior.dit import PRESETS, BlockCausalDiT, PriorConfig, prior_config
from latentbridge.prior.masks import TokenMeta, block_causal_mask, visible

__all__ = ["PRESETS", "BlockCausalDiT", "KVCache", "NoOptions", "PriorBackbone", "PriorConfig", "TokenMeta", "block_causal_mask", "prior_config", "visible"]
