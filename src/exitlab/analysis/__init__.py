"""Training-dynamics analyses of multi-exit models: gradient contributions, activation rank, mutual information,
loss landscapes and mode connectivity. Each works on any :class:`~exitlab.models.MultiExitModel`; ``exitlab analyze``
runs them on finished run directories and writes JSON plus a PNG redrawn from that JSON alone.

Import the submodules you need (``exitlab.analysis.gradients`` etc.); matplotlib is only imported by ``plots``.
"""
