"""Semantic segmentation (U-Net): dataset, losses, metrics, train, evaluate, predict, vectorize."""
