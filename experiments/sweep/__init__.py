"""Sweeps: sweep files expanded into runs, their status, GPU sharing, and the launchers."""
