"""gnn-agent: tools."""
