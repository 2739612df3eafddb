"""geomfilter: geometry-aware filtering of fine-tuning data against emergent misalignment.

The pipeline: cache a model's activations on a chat dataset (response tokens),
encode them with a sparse autoencoder, measure how close each sample's features
sit to harmful-behaviour features (decoder cosine), filter, fine-tune, evaluate.
"""

__version__ = "0.1.0"

DEFAULT_MODEL = "smollm2-135m-instruct"

__all__ = ["DEFAULT_MODEL", "__version__"]
