"""Mix-LN (Li et al., ICLR 2025) on transformers' LLaMA modules, written next to the weights by
mixln.cu's scripts/export_hf.py. Layers [0, num_post_ln_layers) are Post-LN, the others LLaMA's own
Pre-LN layers (paper eq. 1 and 2):

    Post-LN:  h = post_attention_layernorm(s * x + attn(x));  out = post_feedforward_layernorm(s * h + mlp(h))
    Pre-LN:   h = x + attn(input_layernorm(x));               out = h + mlp(post_attention_layernorm(h))

s is DeepNorm's residual weight (1 for Mix-LN); the token embedding is multiplied by embedding_scale.
This is core/model_cpu.h's layer_forward. Written for transformers 5.
"""
from torch import nn
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

from .configuration_mixln import MixLNConfig


class PostLNDecoderLayer(LlamaDecoderLayer):
    """A Post-LN layer: LLaMA's attention and MLP, each followed by its residual add and an RMSNorm."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        del self.input_layernorm
        self.post_feedforward_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_scale = config.residual_scale

    def forward(self, hidden_states, **kwargs):
        # kwargs: the mask, positions, cache and RoPE tables that LlamaModel hands every layer
        attn_out, _ = self.self_attn(hidden_states=hidden_states, **kwargs)
        hidden_states = self.post_attention_layernorm(self.residual_scale * hidden_states + attn_out)
        mlp_out = self.mlp(hidden_states)
        return self.post_feedforward_layernorm(self.residual_scale * hidden_states + mlp_out)


class ScaledEmbedding(nn.Embedding):
    """The token embedding times a constant (the paper's Appendix B scaled embedding: sqrt(d))."""

    def __init__(self, num_embeddings, embedding_dim, scale):
        super().__init__(num_embeddings, embedding_dim)
        self.scale = scale

    def forward(self, input_ids):
        return super().forward(input_ids) * self.scale


class MixLNForCausalLM(LlamaForCausalLM):
    config_class = MixLNConfig
    config: MixLNConfig
    _no_split_modules = ["LlamaDecoderLayer", "PostLNDecoderLayer"]

    def __init__(self, config):
        super().__init__(config)
        for i in range(config.num_post_ln_layers):
            self.model.layers[i] = PostLNDecoderLayer(config, i)
        if config.embedding_scale != 1.0:
            self.model.embed_tokens = ScaledEmbedding(config.vocab_size, config.hidden_size, config.embedding_scale)
        self.post_init()


__all__ = ["MixLNForCausalLM"]
