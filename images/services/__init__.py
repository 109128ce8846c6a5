"""Writes of the images app, one module per use case:

- `generation`: the one path from a parsed request to a queued, paid job
  (`generation_create`), used by every entry point;
- `inputs`: reading, checking and storing the input images of edits and variations;
- `moderation`: the prompt check at the tenant's level;
- `jobs`: a job's life after creation (wait, start, complete, fail, cancel, sweep).

This package's `__init__` imports none of them, so the worker can import `jobs`
without pulling in the web side (and no import cycle runs through it).
"""
