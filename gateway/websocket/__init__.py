"""WebSocket API (Channels): requests, subscriptions and cancels over one socket; the Origin
check in front of it."""
