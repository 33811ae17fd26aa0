"""OpenAI-compatible chat: wire models, the chat service, thin routes, grounding."""
