"""fmnist-service: HTTP API, job queue, worker process and CLI around the ``models`` core."""
