"""ragtune.agents.routing: the parts of the question router (see `ragtune.agents.router`).

`decision` holds the shared types, `rules`, `classifier` and `llm` one policy each, `features`
the lexical features, `data` the labelled questions built from the shared QA files and `training`
the training run behind `python -m ragtune.agents.router train`.
"""
