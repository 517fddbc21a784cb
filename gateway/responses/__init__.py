"""OpenAI Responses API on durable jobs: create (stream, background, previous_response_id),
retrieve (with a replay of its events from any sequence number), cancel, delete, input items."""
