"""latentbridge-image-vae: images <-> latent tokens through diffusers' AutoencoderKL."""

from latentbridge_image_vae.codec import ImageVAE, ImageVAEConfig, psnr, ssim

__all__ = ["ImageVAE", "ImageVAEConfig", "psnr", "ssim"]
