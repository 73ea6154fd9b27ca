"""Run a few DIAL train steps on each given mesh; print losses, metrics and shardings as JSON, and save every trainable
parameter before and after (gathered, ``.npz`` named in the JSON; under ``$DIAL_TEST_OUT`` if set).

Used by tests/test_parallel.py in subprocesses with 8 fake CPU devices, or under jax.distributed.
  python -m tests.mesh_worker MODEL_DIR DATA_DIR STEPS MESH [MESH ...]      (MESH = data,fsdp,tensor; 1,1,1 runs
                                                                           on the first device alone; lora:MESH
                                                                           the default LoRA + AdamW setup)
"""
import json
import os
import sys
import tempfile

import jax
import jax.experimental.multihost_utils as mhu
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

from dial_jax import parallel  # noqa: E402
from dial_jax.hf import load  # noqa: E402
from dial_jax.train import loop, state as state_lib, step as step_lib  # noqa: E402
from tests import helpers  # noqa: E402


def run(config, model, variables, batches, mesh, steps):
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  var_sh = parallel.variable_shardings(loop.abstract_variables(model), mesh)
  state, state_sh = state_lib.create_train_state(variables, config, model.config.num_layers,
                                                 model.config.hidden_size, tx, critic_tx, var_sh, mesh)
  local = batches.batch(0)
  shapes = {k: (v.shape[0], v.shape[1] * jax.process_count()) + v.shape[2:] for k, v in local.items()}
  batch_sh = parallel.batch_shardings(shapes, mesh)
  step_fn = step_lib.make_train_step(model, state_lib.make_critic(config), tx, critic_tx, config,
                                     state_shardings=state_sh, batch_sharding=batch_sh, donate=False)
  gathered = lambda tree: {jax.tree_util.keystr(k): np.asarray(mhu.process_allgather(v, tiled=True))
                           for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  initial = gathered(state.trainable)
  history = []
  for i in range(steps):
    state, metrics = step_fn(state, parallel.global_batch(batches.batch(i), batch_sh))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  flat = jax.tree_util.tree_flatten_with_path(state.trainable)[0]
  final = gathered(state.trainable)
  params_file = None
  if jax.process_index() == 0:
    params_file = os.path.join(tempfile.mkdtemp(dir=os.environ.get("DIAL_TEST_OUT")), "params.npz")
    np.savez(params_file, **{f"initial{k}": v for k, v in initial.items()},
             **{f"final{k}": v for k, v in final.items()})
  specs = {jax.tree_util.keystr(k): list(v.sharding.spec) + [None] * (v.ndim - len(v.sharding.spec))
           for k, v in flat}
  return {"history": history, "params_file": params_file, "specs": specs, "mesh": dict(mesh.shape),
          "processes": jax.process_count()}, state


def restore_elsewhere(config, model, variables, state, mesh, workdir):
  """Save ``state`` with the Checkpointer, restore it into a state laid out on ``mesh``; True if equal."""
  from dial_jax.checkpoint import Checkpointer
  checkpointer = Checkpointer(workdir, every=1, keep=1)
  checkpointer.maybe_save(int(state.step), state, force=True)
  checkpointer.close()
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  var_sh = parallel.variable_shardings(loop.abstract_variables(model), mesh)
  template, _ = state_lib.create_train_state(variables, config, model.config.num_layers, model.config.hidden_size,
                                             tx, critic_tx, var_sh, mesh)
  restored = Checkpointer(workdir, every=1, keep=1).restore(template)
  same = all(np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(state.replace(frozen={})), jax.tree.leaves(restored.replace(frozen={}))))
  on_new_mesh = all(x.sharding.mesh.devices.size == mesh.size for x in jax.tree.leaves(restored.trainable))
  return same and on_new_mesh and int(restored.step) == int(state.step)


def main(model_dir, data_dir, steps, *meshes):
  parallel.initialize_distributed()
  config = helpers.tiny_config(model_dir, data_dir, **{
      "train.batch_size": 8, "train.trainable": "full", "train.optimizer": "sgd", "train.learning_rate": 1e-2,
      "train.max_grad_norm": 0.0, "lora.rank": 0})
  config.data.packing = os.environ.get("DIAL_TEST_PACKING", "none")
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, _ = loop.load_data(config, tokenizer)

  def batches_for(mesh):
    return loop.paired_batches(config, source, target, model.config.pad_token_id, mesh)
  default = None  # the default setup (LoRA + AdamW, packing as configured), built on first use
  results = []
  for spec in meshes:
    if spec.startswith("lora:"):
      if default is None:
        c = helpers.tiny_config(model_dir, data_dir, **{"train.batch_size": 8})
        assert c.train.trainable == "lora" and c.train.optimizer == "adamw" and c.lora.rank > 0
        m, v, _, _ = load.build_model(c)
        default = c, m, v
      c, m, v = default
      c.mesh.data, c.mesh.fsdp, c.mesh.tensor = map(int, spec[len("lora:"):].split(","))
      mesh = parallel.make_mesh(c.mesh, jax.devices()[:1] if spec == "lora:1,1,1" else None)
      result, _ = run(c, m, v, loop.paired_batches(c, source, target, m.config.pad_token_id, mesh), mesh, int(steps))
      results.append(result)
      continue
    if spec.startswith("restore:"):  # restore the previous mesh's final state onto this one (fewer devices)
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = map(int, spec[len("restore:"):].split(","))
      size = config.mesh.data * config.mesh.fsdp * config.mesh.tensor
      mesh = parallel.make_mesh(config.mesh, jax.devices()[:size])
      import tempfile
      results.append({"restored_equal": restore_elsewhere(config, model, variables, last_state, mesh,
                                                          tempfile.mkdtemp()), "mesh": dict(mesh.shape)})
      continue
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = map(int, spec.split(","))
    devices = jax.devices()[:1] if spec == "1,1,1" else None
    mesh = parallel.make_mesh(config.mesh, devices)
    result, last_state = run(config, model, variables, batches_for(mesh), mesh, int(steps))
    results.append(result)
  if jax.process_index() == 0:
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
  main(*sys.argv[1:])
