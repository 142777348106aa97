"""kvtier.transformers: a Hugging Face transformers Cache backed by a kvtier session.

    import kvtier
    from kvtier.transformers import KvTierCache, register_attention

    register_attention()                                   # once: adds attn_implementation="kvtier"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16, attn_implementation="kvtier")
    with kvtier.Client() as client:
        cache = KvTierCache(model.config, client)
        hit = cache.load_prefix(input_ids)                 # Lookup + pin + page-in of the cached prefix
        out = model.generate(input_ids, past_key_values=cache, max_new_tokens=32,
                             logits_processor=[cache.token_observer()])
        cache.release()

Installed with the optional extra `kvtier[transformers]` (torch and transformers 5.x). See
docs/transformers.md for the data path, the two attention paths and what is still missing on the GPU.
"""
from kvtier.transformers._attention import ATTENTION_NAME, kvtier_attention_forward, register_attention
from kvtier.transformers._cache import KvTierCache, TokenObserver, precision_policy
from kvtier.transformers._calibration import DaemonCalibration, KvStatsRecorder

__all__ = ["ATTENTION_NAME", "DaemonCalibration", "KvStatsRecorder", "KvTierCache", "TokenObserver",
           "kvtier_attention_forward", "precision_policy", "register_attention"]
