"""Offline work on models: dataset splits, pruning into levels, evaluation, reports (import the modules)."""
