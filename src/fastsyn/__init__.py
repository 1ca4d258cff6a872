"""fastsyn: fast, threaded, deterministic SyN registration on top of DIPY."""
__version__ = "0.1.0"
