"""Mix-LN's configuration (written next to the weights by mixln.cu's scripts/export_hf.py): LLaMA's,
plus which layers are Post-LN and the DeepNorm and embedding scales. Written for transformers 5."""
from transformers import LlamaConfig


class MixLNConfig(LlamaConfig):
    model_type = "mixln"

    norm_scheme: str = "mixln"       # mixln (alpha), deepnorm (DeepNet), deepnorm_paper (the Mix-LN code's)
    alpha: float = 0.0               # Mix-LN's fraction of Post-LN layers
    num_post_ln_layers: int = 0      # layers [0, this) are Post-LN: floor(alpha * L), or L for DeepNorm
    residual_scale: float = 1.0      # s in a Post-LN layer's norm(s * x + f(x)); 1 except for DeepNorm
    embedding_scale: float = 1.0     # the embedding output is multiplied by this (sqrt(d) if scaled)


__all__ = ["MixLNConfig"]
