"""The network and its maths: configuration, the 3-D U-Net, the diffusion process, the model, checkpoints.

The package imports nothing itself, so that torch-free modules stay importable without torch."""
