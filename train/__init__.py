"""Workstation side: data preparation, fine-tuning, evaluation and export (needs torch)."""
