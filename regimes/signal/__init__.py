"""Neural-signal science package (SCIENCE.md part B).

Recover the synaptic connectivity W of a chaotic rate network
du/dt = -u + g W tanh(u) from its simulated activity with a GNN
du/dt = lin_phi(u, a) + W lin_edge(u, a).

Kept import-free: the training subprocess imports `regimes.signal.train`,
and the loop imports this package only to locate its files.
"""
