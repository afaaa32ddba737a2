"""The contrastive model: augmentations, losses, the encoder, encoder files, and training with
checkpoint selection."""
