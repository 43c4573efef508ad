"""gnn-agent: prompts."""
