"""This project's model in Hugging Face's terms: tensor names and config.json, both directions.
Used by export_hf.py and import_hf.py; the modeling code for Mix-LN models is in hf_mixln/.

Tensor names are LLaMA's. A layer's two RMSNorm weights (norm_a, norm_b) are named by where they sit:
    Pre-LN  (eq. 2): input_layernorm (before attention), post_attention_layernorm (before the MLP)
    Post-LN (eq. 1): post_attention_layernorm (after the attention residual),
                     post_feedforward_layernorm (after the MLP residual)
A model with no Post-LN layer and no scaled embedding is a plain LlamaForCausalLM; any other is a
MixLNForCausalLM (hf_mixln/modeling_mixln.py), whose config.json adds the fields of MIXLN_FIELDS.
"""
from checkpoint_format import (NORM_SCHEMES, ModelConfig, embedding_scale, norm_scheme_name,
                               num_post_ln_layers, residual_scale)

# The per-layer tensors of the checkpoint and their names inside model.layers.N.
LAYER_TENSORS = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
                 "wo": "self_attn.o_proj", "wgate": "mlp.gate_proj", "wup": "mlp.up_proj", "wdown": "mlp.down_proj"}
PRE_LN_NORMS = {"norm_a": "input_layernorm", "norm_b": "post_attention_layernorm"}
POST_LN_NORMS = {"norm_a": "post_attention_layernorm", "norm_b": "post_feedforward_layernorm"}
WHOLE_TENSORS = {"wte": "model.embed_tokens.weight", "norm_f": "model.norm.weight", "lm_head": "lm_head.weight"}

# The fields a Mix-LN config.json adds to LLaMA's.
MIXLN_FIELDS = ("norm_scheme", "alpha", "num_post_ln_layers", "residual_scale", "embedding_scale")


def is_plain_llama(config):
    return num_post_ln_layers(config) == 0 and not config.scaled_embed


def hf_tensor_names(config):
    """[(checkpoint tensor, layer or None, Hugging Face name)] for every tensor of the model."""
    names = [(t, None, WHOLE_TENSORS[t]) for t in ("wte", "norm_f", "lm_head")]
    for layer in range(config.n_layer):
        norms = POST_LN_NORMS if layer < num_post_ln_layers(config) else PRE_LN_NORMS
        for t, name in list(LAYER_TENSORS.items()) + list(norms.items()):
            names.append((t, layer, f"model.layers.{layer}.{name}.weight"))
    return names


def hf_config(config, torch_dtype="float32"):
    """config.json's dictionary for a checkpoint's ModelConfig."""
    plain = is_plain_llama(config)
    out = {
        "architectures": ["LlamaForCausalLM" if plain else "MixLNForCausalLM"],
        "model_type": "llama" if plain else "mixln",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ffn,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.d_model // config.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # where transformers 4 reads it; 5 reads rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": torch_dtype,
    }
    if not plain:
        out.update({
            "auto_map": {"AutoConfig": "configuration_mixln.MixLNConfig",
                         "AutoModelForCausalLM": "modeling_mixln.MixLNForCausalLM"},
            "norm_scheme": norm_scheme_name(config),
            "alpha": config.alpha,
            "num_post_ln_layers": num_post_ln_layers(config),
            "residual_scale": residual_scale(config),
            "embedding_scale": embedding_scale(config),
        })
    return out


def model_config_from_hf(hf):
    """The ModelConfig of a config.json dictionary (LLaMA or one export_hf.py wrote); raises ValueError
    naming every feature this project's model does not have."""
    unsupported = []
    arch = hf.get("model_type")
    if arch not in ("llama", "mixln"):
        unsupported.append(f"model_type '{arch}' (llama or mixln)")
    heads = hf.get("num_attention_heads")
    if (hf.get("num_key_value_heads") or heads) != heads:
        unsupported.append(f"grouped-query attention ({hf['num_key_value_heads']} key/value heads for {heads} heads)")
    if hf.get("tie_word_embeddings", False):
        unsupported.append("tied embeddings (tie_word_embeddings)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key, False):
            unsupported.append(f"biases ({key})")
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        unsupported.append(f"RoPE scaling '{rope_type}'")
    if hf.get("hidden_act", "silu") != "silu":
        unsupported.append(f"activation '{hf['hidden_act']}' (SwiGLU with silu only)")
    hidden = hf.get("hidden_size", 0)
    if heads and (hf.get("head_dim") or hidden // heads) * heads != hidden:
        unsupported.append(f"head_dim {hf['head_dim']} x {heads} heads != hidden_size {hidden}")
    if unsupported:
        raise ValueError("unsupported: " + "; ".join(unsupported))
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    common = dict(vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
                  n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
                  d_ffn=hf["intermediate_size"],
                  rope_theta=float(theta), norm_eps=float(hf.get("rms_norm_eps", 1e-6)))
    if arch == "llama":
        return ModelConfig(**common)
    scheme = {name: k for k, (name, _, _) in NORM_SCHEMES.items()}.get(hf["norm_scheme"])
    if scheme is None:
        raise ValueError(f"unsupported: norm_scheme '{hf['norm_scheme']}' (known: {[n for n, _, _ in NORM_SCHEMES.values()]})")
    config = ModelConfig(**common, norm_scheme=scheme, alpha=float(hf["alpha"]),
                         scaled_embed=hf["embedding_scale"] != 1.0)
    derived = {"num_post_ln_layers": num_post_ln_layers(config), "residual_scale": residual_scale(config),
               "embedding_scale": embedding_scale(config)}
    wrong = [f"{k} {hf[k]} (expected {v})" for k, v in derived.items() if hf[k] != v]
    if wrong:
        raise ValueError("unsupported: " + "; ".join(wrong) + " for its norm_scheme, alpha and hidden_size")
    return config
