"""Cross-cutting parts shared by every app: typed errors and the one exception
handler, middleware, Idempotency-Key machinery, the Redis client factory and the
safe HTTP fetcher. This app imports nothing from the project's other apps."""
