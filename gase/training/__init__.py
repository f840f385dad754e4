"""GASE training: data, augmentation/style diversification, losses, the alternating GAN loop."""
