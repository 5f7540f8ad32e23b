"""Evaluation: greedy generation with vLLM (one engine per base model, adapters as LoRA requests) or
transformers, scoring, ensembles, and background evaluation during training."""
