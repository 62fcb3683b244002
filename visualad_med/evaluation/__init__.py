"""Metrics (AUROC, AP, F1-max, AUPRO in 2D and 3D, Dice), the 2D and volume protocols, result tables and plots."""
