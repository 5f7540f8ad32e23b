"""Experiments whose right answer is known, kept out of the production folders."""
