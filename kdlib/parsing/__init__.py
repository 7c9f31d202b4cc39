"""Reading teacher output: classification and NER answers, duplicates and leaks."""
