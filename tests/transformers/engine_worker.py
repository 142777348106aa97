"""One engine process for the two-process tests: its own tiny model instance and kvtier session.

  engine_worker.py SOCKET PROMPT_SEED SHARED_TOKENS OWN_TOKENS NEW_TOKENS ATTN [--hold]

The prompt is prompt(SHARED_TOKENS, 1000) + prompt(OWN_TOKENS, PROMPT_SEED). Prints one JSON line after
load_prefix ({"event": "prefix", ...}) and one with the generated tokens ({"event": "done", ...}). With
--hold it then keeps generating new continuations (its session, pins and private blocks alive) until killed.
"""
import json
import sys

import torch

from tiny_llama import build_model, greedy, prompt

import kvtier  # noqa: E402 (path set by tiny_llama)
from kvtier.transformers import KvTierCache, precision_policy, register_attention  # noqa: E402


def main():
    sock, seed, shared, own, new, attn = sys.argv[1:7]
    hold = "--hold" in sys.argv
    register_attention()
    model = build_model(attn=attn)
    ids = torch.cat([prompt(int(shared), 1000), prompt(int(own), int(seed))], dim=1)
    with kvtier.Client(target="unix:" + sock, client_name=f"engine-{seed}") as client:
        cache = KvTierCache(model.config, client, policy=precision_policy("fp16", "fp16"))
        n = cache.load_prefix(ids)
        print(json.dumps({"event": "prefix", "prefix_tokens": n}), flush=True)
        tokens, _ = greedy(model, ids, cache, int(new))
        print(json.dumps({"event": "done", "tokens": tokens, "stats": cache.stats}), flush=True)
        while hold:
            cache.release()
            cache.load_prefix(ids)
            greedy(model, ids, cache, int(new))


if __name__ == "__main__":
    main()
