"""lorabatch: LoRA adapters for new datasets without gradient training.

A bank of adapters, each trained on its own dataset, is combined with weights derived from
distances between the datasets (arXiv 2507.01806). Importing this package is cheap: torch,
transformers, vllm and ray are imported only by the stages that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
