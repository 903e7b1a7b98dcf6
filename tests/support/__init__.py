"""Real local stand-ins for production: a service repository, its app and health check, a
notification receiver, a Prefect server and a sevflow worker process."""
