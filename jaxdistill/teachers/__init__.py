"""Teachers that write rationale caches: the protocol (`base`), prompt templates (`prompts`), answer
parsers (`parsers`), an OpenAI-compatible API teacher (`api`) and a local JAX teacher (`local`)."""
