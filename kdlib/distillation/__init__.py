"""Distillation of generative LMs: pure losses with equations, fused losses, trainers, MiniLLM, the training CLI and its resumable state."""
