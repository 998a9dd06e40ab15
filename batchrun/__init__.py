"""batchrun: run large batches of chat-completion requests against OpenAI-compatible providers."""

__version__ = "0.1.0"
