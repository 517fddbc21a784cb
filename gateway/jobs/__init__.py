"""Sluice's native jobs API: submit, list, get, follow as resumable SSE, cancel."""
