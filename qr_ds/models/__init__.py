"""Where student weights come from: packaged GGUF models and .gguf files, converted into cached HF folders."""
