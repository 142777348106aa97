"""The test model: a tiny randomly initialised Llama (GQA: 4 query heads over 2 KV heads of 64, 3 layers,
hidden 256), the same weights in every process that builds it with the same seed. Initialised with a large
std (0.2) so that greedy choices have clear margins. Also the helpers the tests and the engine worker share."""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))

VOCAB = 512
# cpu (CI) or cuda (the gpu-labelled variant: model on the GPU, kvtierd with its CUDA device backend)
DEVICE = os.environ.get("KVTIER_TEST_DEVICE", "cpu")


def build_model(seed=0, dtype=torch.float16, attn="sdpa", init_std=0.2):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads(1)  # CI shares 2 cores; one thread is also the fastest for this size
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                      initializer_range=init_std, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype).to(DEVICE).eval()
    model.set_attn_implementation(attn)
    return model


def prompt(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (1, n), generator=g)


def greedy(model, ids, cache, new_tokens, observer=True):
    """generate() with greedy decoding; returns (new token ids, per-step logits [steps, vocab] fp32)."""
    kwargs = {}
    if observer and hasattr(cache, "token_observer"):
        kwargs["logits_processor"] = [cache.token_observer()]
    ids = ids.to(model.device)
    with torch.no_grad():
        out = model.generate(ids, past_key_values=cache, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, **kwargs)
    return out.sequences[0, ids.shape[1]:].tolist(), torch.cat([x.float() for x in out.logits], dim=0)


def teacher_forced(model, ids, cache, tokens):
    """Logits [1 + len(tokens), vocab] (fp32) of the prompt's last position and then of each forced token,
    through `cache` (after its load_prefix)."""
    past = cache.get_seq_length()
    ids = ids.to(model.device)
    rows = []
    with torch.no_grad():
        out = model(input_ids=ids[:, past:], past_key_values=cache, use_cache=True)
        rows.append(out.logits[0, -1].float())
        for t in tokens:
            out = model(input_ids=torch.tensor([[t]], device=model.device), past_key_values=cache, use_cache=True)
            rows.append(out.logits[0, -1].float())
    return torch.stack(rows)
