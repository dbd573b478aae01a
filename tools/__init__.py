"""ragtune.tools: the pgvector knowledge store, ingestion and the LangChain tool faces."""
