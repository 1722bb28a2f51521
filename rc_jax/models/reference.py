"""A plain numpy forward pass without cache: slow, obviously correct, no JAX, no PyTorch.

It reads the same parameter pytree as `rc_jax.models.forward` and computes in float64,
one layer at a time, so it is the CPU oracle for tests.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from rc_jax.models.config import ModelConfig


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """x: [B, S, N, D]; positions: [B, S]. Rotate-half layout."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = positions[..., None].astype(np.float64) * inv_freq  # [B, S, D/2]
    cos, sin = np.cos(angles)[:, :, None, :], np.sin(angles)[:, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def reference_forward(params: Any, config: ModelConfig, tokens: np.ndarray,
                      token_mask: np.ndarray | None = None) -> np.ndarray:
    """Logits [B, S, V] (float64) for tokens [B, S]; left padding marked by token_mask=False.

    Positions count real tokens from 0 in each row; padding keys are never attended to.
    """
    p = _to_numpy(params)
    tokens = np.asarray(tokens)
    b, s = tokens.shape
    mask = np.ones((b, s), bool) if token_mask is None else np.asarray(token_mask, bool)
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    h, k, d = config.num_heads, config.num_kv_heads, config.head_dim
    eps = config.rms_norm_eps

    x = p["embedding"][tokens]
    allowed = mask[:, None, :] & np.tril(np.ones((s, s), bool))[None]  # [B, S(q), S(k)]
    layers = p["layers"]
    for i in range(config.num_layers):
        lp = _layer(layers, i)
        a = lp["attn"]
        y = _rms_norm(x, lp["attn_norm"]["scale"], eps)
        q = np.einsum("bse,ehd->bshd", y, a["q_proj"])
        kk = np.einsum("bse,ekd->bskd", y, a["k_proj"])
        vv = np.einsum("bse,ekd->bskd", y, a["v_proj"])
        if config.qkv_bias:
            q, kk, vv = q + a["q_bias"], kk + a["k_bias"], vv + a["v_bias"]
        if config.qk_norm:
            q = _rms_norm(q, a["q_norm"]["scale"], eps)
            kk = _rms_norm(kk, a["k_norm"]["scale"], eps)
        q, kk = _rope(q, positions, config.rope_theta), _rope(kk, positions, config.rope_theta)
        kk = np.repeat(kk, h // k, axis=2)  # each KV head serves G consecutive query heads
        vv = np.repeat(vv, h // k, axis=2)
        scores = np.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(d)
        scores = np.where(allowed[:, None], scores, -np.inf)
        row_max = scores.max(-1, keepdims=True)
        probs = np.exp(scores - np.where(np.isfinite(row_max), row_max, 0.0))
        # Fully padded query rows attend to nothing; their outputs are never read.
        probs = probs / np.maximum(probs.sum(-1, keepdims=True), 1e-300)
        attn = np.einsum("bhqk,bkhd->bqhd", probs, vv)
        out = np.einsum("bshd,hde->bse", attn, a["o_proj"])
        if config.o_bias:
            out = out + a["o_bias"]
        x = x + out
        m = lp["mlp"]
        y = _rms_norm(x, lp["mlp_norm"]["scale"], eps)
        x = x + (_silu(y @ m["gate_proj"]) * (y @ m["up_proj"])) @ m["down_proj"]
    x = _rms_norm(x, p["final_norm"]["scale"], eps)
    head = p["embedding"].T if config.tie_word_embeddings else p["lm_head"]
    return x @ head


def _layer(layers: dict, i: int) -> dict:
    if isinstance(layers, dict):
        return {k: _layer(v, i) for k, v in layers.items()}
    return layers[i]


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float64)
