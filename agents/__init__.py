"""ragtune.agents: the model-facing parts (context, prompts, models, router, specialist)."""
