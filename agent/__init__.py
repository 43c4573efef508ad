"""gnn-agent: agent."""
