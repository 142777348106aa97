"""Calibration hook: statistics of a real model's K/V, gathered as the cache writes them.

KvTierCache(observer=...) calls observer(layer, key_states, value_states) on every update, before the
K/V are written to kvtier pages. KvStatsRecorder is such an observer: per layer and KV head it keeps the
per-channel absolute maxima of K (what per-channel static K scales are made of) and the per-token absolute
maxima of V (their maximum and a high percentile make a static V scale), and exports them as plain data.

Daemon-side calibration (kvtierctl calibrate start|stop|export, when the daemon has it) needs nothing from
the engine beyond this cache: every K/V the model produces goes through WriteBlocks, so a calibration
session in kvtierd sees exactly what this recorder sees.
"""
import torch


class KvStatsRecorder:
    def __init__(self, num_layers, num_kv_heads, head_dim, percentile=0.999):
        self.percentile = percentile
        self.tokens = [0] * num_layers
        self.k_absmax = torch.zeros(num_layers, num_kv_heads, head_dim, dtype=torch.float32)
        self.v_token_absmax = [[] for _ in range(num_layers)]  # per layer: [H, tokens] chunks

    def __call__(self, layer, key_states, value_states):
        k = key_states[0].detach().float().abs().cpu()       # [H, n, D]
        v = value_states[0].detach().float().abs().cpu()
        self.k_absmax[layer] = torch.maximum(self.k_absmax[layer], k.amax(dim=1))
        self.v_token_absmax[layer].append(v.amax(dim=2))     # [H, n]
        self.tokens[layer] += k.shape[1]

    def export(self):
        """{"tokens", "k_channel_absmax" [L][H][D], "v_absmax" [L][H], "v_percentile" [L][H], "percentile"}."""
        v_max, v_pct = [], []
        for chunks in self.v_token_absmax:
            if not chunks:
                v_max.append(None)
                v_pct.append(None)
                continue
            t = torch.cat(chunks, dim=1)
            v_max.append(t.amax(dim=1).tolist())
            v_pct.append(torch.quantile(t, self.percentile, dim=1).tolist())
        return {"tokens": list(self.tokens), "k_channel_absmax": self.k_absmax.tolist(), "v_absmax": v_max,
                "v_percentile": v_pct, "percentile": self.percentile}


class DaemonCalibration:
    """kvtierd's calibration mode around an engine run (docs/calibration.md when the daemon has it):

        with DaemonCalibration(cache) as cal:     # StartCalibration for the cache's layout (admin)
            model.generate(..., past_key_values=cache)
        scales = cal.export()                     # ExportCalibration: a scales file (bytes)

    The daemon reduces every page written with WriteBlocks to per-channel min/max, which is exactly what this
    cache writes (pages rewritten as they fill do not change a min/max; their not yet written zero rows only
    inflate the token count). Raises NotImplementedError when this kvtier.v1 has no calibration RPCs.
    """

    def __init__(self, cache):
        from kvtier.v1 import kvtier_pb2 as pb
        if not hasattr(pb, "StartCalibrationRequest"):
            raise NotImplementedError("this kvtier.v1 API has no calibration RPCs (StartCalibration)")
        self._pb = pb
        self.client = cache.client
        self.layout_id = cache.layout.layout_id
        self.token_count = None

    def __enter__(self):
        self.client._call("StartCalibration", self._pb.StartCalibrationRequest(session_id=self.client.session_id,
                                                                               layout_id=self.layout_id))
        return self

    def __exit__(self, *exc):
        r = self.client._call("StopCalibration", self._pb.StopCalibrationRequest(session_id=self.client.session_id))
        self.token_count = sum(x.token_count for x in r.layouts if x.layout_id == self.layout_id)

    def export(self):
        r = self.client._call("ExportCalibration", self._pb.ExportCalibrationRequest(
            session_id=self.client.session_id, layout_id=self.layout_id))
        return r.scales_file
