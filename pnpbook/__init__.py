"""pnpbook: the helper package of the book on perceptual-neural-physical sound matching.

Modules are named after what they do (:mod:`pnpbook.config`, :mod:`pnpbook.synth`,
:mod:`pnpbook.scaling`, :mod:`pnpbook.data`, ...); chapters import them.
"""
__version__ = "0.1.0"
