"""Training jobs: their status, the queue (the only writer of job state), read queries, sweeps and wake-ups.

Importing the package imports nothing: ``service.jobs.status`` is read by the client, which must not load the ORM.
"""
