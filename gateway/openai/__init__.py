"""OpenAI-compatible API: chat and text completions (batches, token-id prompts, logprobs),
models. Request parsing (`serializers`), response bodies and SSE chunks (`shaping`), views."""
