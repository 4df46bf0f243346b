"""Operating the service: health and readiness, Prometheus metrics, JSON logs with request and
correlation ids, security headers, per-client rate limits and the server's process model.

``metrics`` and ``logs`` sit low (services count into them); ``health``, ``http`` and
``server`` sit at the top beside app.main, which wires them in with ``install``."""


def install(app, settings) -> None:  # type: ignore[no-untyped-def]
    """The operations routes, the rate limit (added first, so it runs inside the request ids) and
    admission by priority inside it."""
    from app.ops.admission import AdmissionMiddleware
    from app.ops.health import router
    from app.ops.ratelimit import RateLimitMiddleware

    from app.ops.refusals import RefusalCoalescer

    app.include_router(router)
    app.add_middleware(AdmissionMiddleware, slots=settings.admission_slots, write_slots=settings.admission_write_slots)  # inside the rate limit: a refused request takes no slot
    app.add_middleware(RateLimitMiddleware, settings=settings)
    app.state.refusals = RefusalCoalescer(settings.audit_refusals_per_window, settings.audit_refusals_window_seconds)
    app.state.refusals.bind(app.state.db)
    app.router.on_shutdown.append(app.state.refusals.stop)
