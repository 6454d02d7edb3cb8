"""causal-rcm: Causal-rCM distillation of video diffusion transformers into few-step streaming generators."""
__version__ = "0.1.0"
