from .blobworld import (ACTION_NAMES, AGENT, AGENT_PROMPTS, COLOUR_NAMES, COLOURS, PALETTE, T2V_PROMPTS,
                        from_model, load_samples, make_prompt, prompt_colours, render, sample_worlds, save_samples,
                        to_model)

__all__ = ["ACTION_NAMES", "AGENT", "AGENT_PROMPTS", "COLOUR_NAMES", "COLOURS", "PALETTE", "T2V_PROMPTS",
           "from_model", "load_samples", "make_prompt", "prompt_colours", "render", "sample_worlds", "save_samples",
           "to_model"]
