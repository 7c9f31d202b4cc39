"""Students: encoder + head for classification, NER and extractive QA, and their metrics."""
