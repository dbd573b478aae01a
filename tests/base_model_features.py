"""What a base causal LM lacks, declared through LangChain's standard-suite properties.

Shared by the standard chat-model suites of the local model and of adapters served by an engine:
both are plain text completers, so no tool calling (and so no tool choice or structured output),
no JSON mode, and one set of weights per instance (no per-call model override); both report usage.
"""

from __future__ import annotations


class BaseModelFeatures:
    """A mixin for `ChatModelUnitTests` / `ChatModelIntegrationTests` subclasses."""

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        # One instance serves one set of weights; a call naming others is refused.
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
