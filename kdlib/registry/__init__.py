"""Data and models: datasets by name or path, offline models by hub id, instruction data."""
