"""text-generation-inference compatible API: /generate, /generate_stream, / (TGI's
compatibility route), /info, /health, with TGI's error envelope and details."""
