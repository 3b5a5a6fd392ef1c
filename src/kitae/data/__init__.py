"""Data: read files, render texts, encode targets, split, batch."""
