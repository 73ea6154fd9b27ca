"""Model FLOPs of the DIAL train step, counted from the backbone's HF config (used by the benchmarks and
``dial_jax.aot``)."""


def model_flops(cfg: dict, lengths, *, lora_rank: int, lora_targets, trainable: str = "lora", groups=()) -> dict:
  """Model FLOPs of one DIAL step over sequences of the given (useful, non-pad) lengths, plus prefix-shared
  ``groups`` (chosen length, rejected length, shared prefix length k): ``lc + lr - k`` tokens, and the attention of
  both texts with the prefix's counted once.

  Matmuls: forward ``2 * P * tokens`` (P = decoder matmul weights; the embedding is a lookup and not counted);
  backward ``2 * P * tokens`` for the input gradients through frozen weights (LoRA) or ``4 * P * tokens`` with
  weight gradients (full fine-tuning). Attention: forward ``4 * heads * head_dim * pairs`` (QK^T and PV over the
  causal (query, key) pairs, limited to the window on sliding layers), backward twice that. LoRA:
  ``2 * r * (in + out)`` per adapted projection and token forward, twice that backward. A reward model reads one
  token per sequence, so the last layer needs its k/v projections at every token but its query, attention, output
  projection and MLP at that token only; counted so. The critic, losses and score head are negligible, not counted.
  """
  d, f, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
  heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
  hd = cfg.get("head_dim") or d // heads
  proj = {"q_proj": (d, heads * hd), "k_proj": (d, kv * hd), "v_proj": (d, kv * hd), "o_proj": (heads * hd, d),
          "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
  types = cfg.get("layer_types") or ["full_attention"] * n_layers
  window = cfg.get("sliding_window")
  tokens = int(sum(lengths)) + sum(lc + lr - k for lc, lr, k in groups)
  seqs = len(lengths) + 2 * len(groups)
  bwd_dense = 1 if trainable == "lora" else 2  # input gradients only, or input + weight gradients

  def attn_pairs(length, w, last_only):
    if last_only:
      return min(length, w or length)
    if w is None or length <= w:
      return length * (length + 1) // 2
    return w * (w + 1) // 2 + (length - w) * w

  fwd = bwd = attn = 0
  for i, layer_type in enumerate(types):
    last = i == n_layers - 1
    w = window if layer_type == "sliding_attention" else None
    for name, (n_in, n_out) in proj.items():
      n = tokens if (not last or name in ("k_proj", "v_proj")) else seqs
      lora = lora_rank * (n_in + n_out) if lora_rank and name in lora_targets else 0
      fwd += 2 * (n_in * n_out + lora) * n
      bwd += 2 * (bwd_dense * n_in * n_out + 2 * lora) * n
    pairs = sum(attn_pairs(int(l), w, last) for l in lengths)
    if last:
      pairs += sum(attn_pairs(lc, w, True) + attn_pairs(lr, w, True) for lc, lr, _ in groups)
    else:
      pairs += sum(attn_pairs(lc, w, False) + attn_pairs(lr, w, False) - attn_pairs(k, w, False)
                   for lc, lr, k in groups)
    a = 4 * heads * hd * pairs
    fwd, bwd, attn = fwd + a, bwd + 2 * a, attn + 3 * a
  return {"total": fwd + bwd, "forward": fwd, "backward": bwd, "attention": attn, "tokens": tokens}
