"""latentbridge-audio: waveforms <-> latent frames through log-mel spectrograms and a convolutional VAE."""

from latentbridge_audio.codec import AudioVAE, AudioVAEConfig, mr_stft_distance

__all__ = ["AudioVAE", "AudioVAEConfig", "mr_stft_distance"]
