"""Instructions: the task templates (FP), LLM paraphrases (RP) and held-out phrasings."""
