"""Quality experiments on a CPU: the paper's four settings with a top-layer reward model on cached activations."""
