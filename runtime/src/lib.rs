//! mixq-runtime: the Gemma 3 model, its backends, generation and the chat template.
