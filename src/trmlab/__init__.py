"""trmlab: Tiny Recursive Models — one recursion engine for puzzles, language models and latent reasoning."""

__version__ = "0.1.0"
