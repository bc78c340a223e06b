"""Baselines the latent models are measured against."""
