"""ragtune.graphs: LangGraph state, routing and graph builders."""
