"""Training-dynamics analyses of multi-exit models: gradient contributions, activation rank, mutual information,
loss landscapes and mode connectivity (with weight matching and seed baselines). Each works on any
:class:`~exitlab.models.MultiExitModel`; ``exitlab analyze`` runs them on run directories (or intermediate
checkpoints), aggregates several seeds of a regime, and writes JSON plus a PNG redrawn from that JSON alone.

Import the submodules you need (``exitlab.analysis.gradients`` etc.); matplotlib is only imported by the plots.
"""
