"""Layer 1, core: the one neuron update (``neuron``), simulation (``simulation``: reset + T steps, evaluate),
spiking nodes (``nodes``: find them, read their knobs; the registry the plugins fill), ``activations`` (the one
ACTIVATIONS registry), ``checks`` (one validator per kind of argument), ``files``, ``layers`` (the plain layers graph
normalisation puts in) and ``pooling`` (gated spiking max pooling). Imports nothing of the package."""
