"""The benchmark's data: real HH / TL;DR pairs, the train batches ``PairedBatches`` makes of them, their token
counts, and batches saved for the subprocess workers."""
from __future__ import annotations

from pathlib import Path

PARTS = ("source_chosen", "source_rejected", "target_chosen", "target_rejected")
PACKING = {"dial_jax": "none", "dial_jax_packed": "sequences", "dial_jax_shared": "shared_prefix"}  # data.packing


def real_domains(raw_dir: Path, tokenizer, max_length: int):
  """(source, target) ``Domain``s: HH-RLHF harmless test dialogues (source) and TL;DR comparisons (target) from
  ``raw_dir`` (``../shared/data/raw``), tokenised and cut to ``max_length`` the way
  ``dial_jax.data.pipeline.load_domain`` does."""
  from dial_jax.data import pipeline, sources, tokenize

  raw = Path(raw_dir)
  if not raw.is_dir():
    raise FileNotFoundError(f"{raw} is missing: the benchmark reads ../shared/data/raw beside the checkout")
  hh, _ = sources.convert_hh(raw / "hh-rlhf-harmless" / "test.jsonl.gz")
  tldr, _ = sources.convert_comparisons([raw / "summarize-from-feedback" / f for f in ("batch13.json",
                                                                                      "batch18.json")], "tldr")
  out = []
  for name, rows in (("hh-rlhf-harmless", hh), ("tldr", tldr)):
    dom = pipeline.Domain(name=name, kind="pairs")
    for side, field in (("chosen", "response_chosen"), ("rejected", "response_rejected")):
      texts = [tokenize.join(r["prompt"], r[field]) for r in rows]
      setattr(dom, side, tokenize.encode(tokenizer, texts, max_length))
    out.append(dom)
  return tuple(out)


def make_batches(domains, settings, *, pairs: int, max_length: int, n: int, pad_id: int, seed: int,
                 packing_mode: str = "none") -> list[dict]:
  """``n`` steps of dial_jax train batches from ``PairedBatches``, the pipeline training uses: length-bucketed, or
  packed per ``packing_mode`` (the same pairs either way); bucket and row settings from ``settings``
  (``dial_side.Settings``)."""
  from dial_jax.data import batching, pipeline

  source, target = domains
  pb = pipeline.PairedBatches(source, target, batch_size=pairs, grad_accum_steps=1,
                              buckets=batching.bucket_lengths(max_length, min(settings.min_bucket, max_length)),
                              pad_id=pad_id, seed=seed, packing_mode=packing_mode,
                              pack_row_length=settings.pack_row_length,
                              pack_rows_multiple=settings.pack_row_multiple)
  return [pb.batch(step) for step in range(n)]


def sequences_of(batch: dict) -> list[list[int]]:
  """The step's token lists (padded batch), in the step's order."""
  return [batch[f"{p}_ids"][0, i, :int(m)].tolist() for p in PARTS
          for i, m in enumerate(batch[f"{p}_mask"][0].sum(-1))]


def batch_stats(batch: dict) -> dict:
  """Useful tokens and the token slots dial_jax (padded) and the reference compute for one batch."""
  lengths = [int(x) for p in PARTS for x in batch[f"{p}_mask"].sum(-1).ravel()]
  rows, padded = batch["source_chosen_ids"].shape[1], batch["source_chosen_ids"].shape[2]
  per_part = [int(batch[f"{p}_mask"].sum(-1).max()) for p in PARTS]
  return {"lengths": lengths, "useful_tokens": sum(lengths), "padded_length": padded,
          "slots": {"dial_jax": 4 * rows * padded, "torch": rows * sum(per_part)}}


def save_batches(batches: list[dict], path: Path) -> None:
  import numpy as np
  np.savez(path, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})


def load_batches(path: Path) -> list[dict]:
  import numpy as np
  data = np.load(path)
  out: dict[int, dict] = {}
  for key in data.files:
    i, k = key.split("/", 1)
    out.setdefault(int(i), {})[k] = data[key]
  return [out[i] for i in sorted(out)]
