"""Tool (function) calling: what a request's tools make of the prompt, the output and its stream.

Sluice owns the prompt, so it owns tool calls end to end, for local models and for upstream
engines alike (DESIGN.md: tool calls are rendered and parsed by Sluice):

- the tools go into the model's own chat template (``tools=``, as transformers'
  ``apply_chat_template`` passes them), with earlier calls and their results as messages;
- ``tool_choice: "required"`` or a named function is enforced with a structured-output
  constraint (`calls.forced_constraint`), so even a small model answers with a valid call;
- ``tool_choice: "auto"`` is parsed from the model's free text by the parser its version names
  (`parsers`: Hermes ``<tool_call>`` JSON, Llama 3 JSON), as vLLM's tool parsers do;
- `stream.ToolCallStream` turns the text as it streams into content deltas and tool-call deltas
  (OpenAI's chunk shape, the Responses API's items), and the whole text into the same calls.

Nothing here imports torch or Django.
"""
