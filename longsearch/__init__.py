"""longsearch: search per-dimension RoPE rescale factors to extend a model's context window.

Every RoPE extension method is a rescale vector λ (one value per rotary frequency) plus an
attention factor m; see :mod:`longsearch.rope`.
"""

__version__ = "0.1.0"
