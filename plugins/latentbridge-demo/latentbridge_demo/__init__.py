"""The demo world of latentbridge as a plugin distribution: real offline data sets (text, images with captions,
speech) and the evaluators that score generation on them, registered through the public hooks."""

