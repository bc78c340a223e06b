"""latentbridge-text-vae: the reference text codec (a Cola DLM-style Text VAE) as a latentbridge plugin."""

from latentbridge_text_vae.codec import TextDecodeStream, TextItem, TextVAE, TextVAEConfig
from latentbridge_text_vae.tokenizer import load_tokenizer, train_tokenizer

__all__ = ["TextDecodeStream", "TextItem", "TextVAE", "TextVAEConfig", "load_tokenizer", "train_tokenizer"]
