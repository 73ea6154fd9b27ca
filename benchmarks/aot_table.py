r"""The README's TPU table: ``python -m dial_jax.aot`` for the ``:paper`` configs on several slices, remat policies and
meshes, one subprocess each (a TPU compile of gemma-2b takes minutes on a small CPU), results appended to a JSONL
file as they finish (a rerun skips what is there), then the markdown table.

  python benchmarks/aot_table.py                       # all combinations, priority order
  python benchmarks/aot_table.py --table_only          # print the table from the results file

The four ``:paper`` configs differ only in ``data.setting`` (checked here), which the compiled step does not see
(the batch is the pipeline's worst case), so one config stands for all four.
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETTINGS = ("few_shot", "cross_lingual", "clean_to_noisy", "simple_to_complex")
MESHES = {"data": ("--config.mesh.data=-1", "--config.mesh.fsdp=1"),
          "fsdp": ("--config.mesh.data=1", "--config.mesh.fsdp=-1")}
TOPOLOGIES = ("v5e-8", "v5e-16", "v4-8", "v5p-8")
# Most informative first: the likeliest fit (fsdp, full remat) and the default (data, none) on every slice.
PRIORITY = [(t, m, r) for m, r in (("fsdp", "full"), ("data", "none")) for t in TOPOLOGIES] + [
    (t, m, r) for m, r in (("fsdp", "dots"), ("fsdp", "none"), ("data", "full"), ("data", "dots")) for t in TOPOLOGIES]


def paper_configs_identical() -> bool:
  """The four ``:paper`` configs are equal apart from ``data.setting``."""
  import importlib
  flat = []
  for s in SETTINGS:
    c = importlib.import_module(f"configs.{s}").get_config("paper")
    d = json.loads(c.to_json_best_effort())
    d["data"].pop("setting")
    flat.append(json.dumps(d, sort_keys=True))
  return len(set(flat)) == 1


def run(topology: str, mesh: str, remat: str, out: Path, include_eval: bool, timeout: int) -> dict:
  tmp = out.with_suffix(".one.json")
  cmd = [sys.executable, "-m", "dial_jax.aot", "--config=configs/few_shot.py:paper", f"--topology={topology}",
         f"--config.model.remat_policy={remat}", *MESHES[mesh], f"--eval={str(include_eval).lower()}",
         f"--output={tmp}"]
  start = time.time()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  if not tmp.exists():
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  row = json.loads(tmp.read_text())
  tmp.unlink()
  row.update(mesh_name=mesh, wall_s=round(time.time() - start, 1))
  return row


def short_problem(p: str) -> str:
  """A table cell for one of ``dial_jax.aot``'s problem lines."""
  m = re.search(r"pairs per micro-batch \((\d+)\) must be divisible by the process count \((\d+)\)", p)
  if m:
    return f"{m.group(1)} pairs per micro-batch cannot be split over {m.group(2)} hosts"
  m = re.search(r"HLO temporaries \(([\d.]+G)\) exceeds available HBM \(([\d.]+G)\)", p)
  if m:
    return f"{p.split(' does not fit')[0]}: temporaries {m.group(1)} > {m.group(2)} usable HBM"
  return p.split(" (")[0]


def table(rows: list[dict]) -> str:
  out = ["| slice | mesh | remat | pairs x micro-batches | train GiB/chip (HBM) | fits | eval GiB/chip | compiled TFLOP/step | model TFLOP/step "
         "| compute bound ms | HBM bound ms | problems |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  order = {(t, m, r): i for i, (t, m, r) in enumerate((t, m, r) for t in TOPOLOGIES for m in MESHES
                                                      for r in ("none", "dots", "full"))}
  for r in sorted(rows, key=lambda r: (order.get((r["topology"], r["mesh_name"], r["remat_policy"]), 99),
                                       -r["grad_accum_steps"])):
    t = r["train"]
    hbm = r["hbm_bytes_per_chip"] / 2**30
    mem = f"{t['memory_per_chip']['total'] / 2**30:.1f} ({hbm:.0f})" if "memory_per_chip" in t else f"OOM ({hbm:.0f})"
    e = r.get("eval")
    ev = (f"{e['memory_per_chip']['total'] / 2**30:.1f}" if e and "memory_per_chip" in e else
          ("OOM" if e else "-"))
    flops = f"{t['flops_per_step'] / 1e12:.0f}" if "flops_per_step" in t else "-"
    bound = f"{t['bound_s'] * 1e3:.0f}" if "bound_s" in t else f"({t['model_bound_s'] * 1e3:.0f})"
    hbm_bound = f"{t['memory_bound_s'] * 1e3:.0f}" if "memory_bound_s" in t else "-"
    problems = "; ".join(short_problem(p) for p in r["problems"])
    out.append(f"| {r['topology']} ({r['hosts']} host{'s' if r['hosts'] > 1 else ''}) | {r['mesh_name']} "
               f"{'x'.join(str(v) for v in r['mesh'].values())} | {r['remat_policy']} | "
               f"{r['pairs_per_domain'] // r['grad_accum_steps']} x {r['grad_accum_steps']} | {mem} | "
               f"{'yes' if t['fits'] else 'no'} | {ev} | {flops} | {t['model_flops_per_step'] / 1e12:.0f} | {bound} | {hbm_bound} | "
               f"{problems or '-'} |")
  return "\n".join(out)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "aot_paper.jsonl"))
  p.add_argument("--max_runs", type=int, default=0, help="stop after this many new compilations (0 = all)")
  p.add_argument("--timeout", type=int, default=1800, help="seconds per compilation")
  p.add_argument("--combos", default="", help="only these, e.g. v4-8/data/none,v5e-16/fsdp/full (default: all)")
  p.add_argument("--table_only", action="store_true")
  args = p.parse_args()
  out = Path(args.output)
  rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
  if not args.table_only:
    if not paper_configs_identical():
      raise SystemExit("the :paper configs differ beyond data.setting: compile each (this script assumes one)")
    done = {(r["topology"], r["mesh_name"], r["remat_policy"]) for r in rows}
    evaluated = {r["topology"] for r in rows if "eval" in r}
    new = 0
    combos = [tuple(c.split("/")) for c in args.combos.split(",")] if args.combos else PRIORITY
    for topology, mesh, remat in combos:
      if (topology, mesh, remat) in done or (args.max_runs and new >= args.max_runs):
        continue
      row = run(topology, mesh, remat, out, include_eval=topology not in evaluated, timeout=args.timeout)
      evaluated.add(topology)
      rows.append(row)
      new += 1
      with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
      print(f"{topology} {mesh} {remat}: fits={row['fits']} ({row['wall_s']} s)", flush=True)
  print(table(rows))


if __name__ == "__main__":
  main()
