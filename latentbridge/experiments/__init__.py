"""Runnable experiments that wire codecs, prior, training and evaluation together."""
