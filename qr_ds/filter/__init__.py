"""Quality filtering (paper section 2.3): drop wrong-answer paths, then paths an LLM judge flags."""
