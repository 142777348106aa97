"""The "kvtier" attention implementation for transformers: kvtier's paged attention over the pool.

register_attention() adds the name to transformers' AttentionInterface and AttentionMaskInterface; a model
loaded (or switched with set_attn_implementation) with attn_implementation="kvtier" then attends through
the KvTierCache's blocks: decode for one new token, prefix-extend (causal within the new tokens) for
several, without a dequantized copy of the cache. Calls that do not come through a KvTierCache (no cache,
another Cache class) are served by transformers' SDPA, so the model stays usable either way.
"""
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask
from transformers.modeling_utils import AttentionInterface

ATTENTION_NAME = "kvtier"


def _kvtier_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=causal_mask_function,
                 attention_mask=None, **kwargs):
    """No mask for the plain causal case (kvtier's kernels apply causality themselves); otherwise SDPA's mask,
    which kvtier_attention_forward refuses for kvtier-served calls (padding and custom masks are not
    supported by the paged kernels)."""
    plain = mask_function is causal_mask_function and kv_offset == 0 and (
        attention_mask is None or bool(attention_mask.all()))
    if plain and batch_size == 1:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask, **kwargs)


def kvtier_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                             softcap=None, **kwargs):
    step = getattr(key, "_kvtier_step", None)
    if step is None:
        if attention_mask is None and query.shape[2] > 1 and key.shape[2] != query.shape[2]:
            raise RuntimeError("kvtier attention without a KvTierCache cannot continue a cache of another kind")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cache, layer, seq_len, num_new = step
    del key._kvtier_step  # one attention per update
    if layer != getattr(module, "layer_idx", layer) or query.shape[2] != num_new:
        raise RuntimeError(f"kvtier attention: update for layer {layer} ({num_new} tokens) does not match the "
                           f"attention call ({query.shape[2]} queries, layer {getattr(module, 'layer_idx', None)})")
    if attention_mask is not None:
        raise NotImplementedError("kvtier attention serves unpadded causal attention only (batch size 1)")
    if sliding_window is not None or softcap is not None or (dropout and module.training):
        raise NotImplementedError("kvtier attention: sliding windows, softcapping and dropout are not supported")
    return cache.attend(layer, query, seq_len, scaling), None


def register_attention():
    """Registers attn_implementation="kvtier" with transformers (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, kvtier_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, _kvtier_mask)
    return ATTENTION_NAME


__all__ = ["ATTENTION_NAME", "kvtier_attention_forward", "register_attention"]
