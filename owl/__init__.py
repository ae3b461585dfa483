"""owl: the mPLUG-Owl paradigm (vision encoder + visual abstractor + any causal LLM), trained in two stages."""

__version__ = "0.1.0"
