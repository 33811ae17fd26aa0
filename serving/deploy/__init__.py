"""``ratchet deploy watch``: a Kubernetes controller that follows the model registry
and runs one vLLM Deployment per served version (blue/green on promotion)."""
