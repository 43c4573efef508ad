"""gnn-agent: sandbox."""
