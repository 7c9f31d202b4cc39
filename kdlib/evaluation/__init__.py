"""Evaluating students beyond accuracy: calibration, wrong teacher labels, training dynamics, attributions, bias."""
