"""Synthesis recipes, by the survey's taxonomy: labelling and co-annotation, reformation, general and domain distillation, self-improvement, EvoKD, data valuation."""
