"""imgshards: raw images -> Delta tables -> Petastorm shards -> PyTorch."""

__version__ = "0.1.0"
