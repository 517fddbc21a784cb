"""A job's life, one module per step (DESIGN.md §1, §4):

- ``publish``: hand a job to its queue (Celery, by task name), the queue a job belongs in;
- ``create``: persist a job, its stream and its placement, and publish it once committed;
- ``prompt``: the model input a job runs (template, session history, retrieval);
- ``execute``: a worker claims a job under its lease and runs it on an engine;
- ``finish``: the final state written once, the stream ended, the admission settled;
- ``retry``: backoff, dead letters, an operator's requeue or discard;
- ``cancel``: a client's cancel and soft delete;
- ``reconcile``: the periodic pass that makes sure every accepted job runs or ends.

Reached from the gateway only through ``inference.client.JobClient``.
"""
