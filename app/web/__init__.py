"""The pages for practitioners (NHS.UK design, server-rendered, usable without JavaScript):
sign in (OpenID Connect, or the embedded default's demo sign-in), find a family, see it as a
genogram with what is known and what is withheld, ask on a safeguarding basis; and for IG
officers the audit search, review queue, subject access report, chain status and notifications."""


def install(app, *, operations: list, extra_resources: list) -> None:
    from app.web.ig_pages import router as ig_router
    from app.web.routes import assets, router
    from app.web.session import Signer

    app.state.web_signer = Signer(app.state.settings)
    app.include_router(assets)
    app.include_router(router)
    app.include_router(ig_router)
