"""Model versions: what is served under which name, and how traffic reaches it.

- ``registry``: the version table as each process sees it (cached, reloaded on change).
- ``routing``: which version a request goes to (weights, stickiness, breakers, fallbacks).
- ``health``: outcomes over a window, circuit breakers, the automatic canary rollback.
- ``lifecycle``: the operator's actions (activate, promote, roll back, drain, retire).
- ``replicas``: an openai version's upstream replicas (health, load, least-outstanding choice).
"""
