"""Create, change and revoke a consent from the portal, each with a confirmation first.

The form (:mod:`middleware.web.choices`) is reviewed on a confirmation page that says in plain
words what will change (:func:`~middleware.web.describe.describe` of the Consent that will be
sent, beside the current one for a change); only its "Save" posts to the Consent API
(``POST {base}/Consent``, ``PUT {base}/Consent/<id>`` with ``If-Match``,
``POST {base}/Consent/<id>/$revoke``). The API answers once the change is on the ledger; the
result page shows its ledger index and links its receipt. Every POST is CSRF-checked; the
choices are read again from the submitted form at each step, never trusted from a hidden
Consent.

A change or a revocation first reads the consent (``GET``, with the patient's own token): it
must be the patient's and active, so a change never creates a consent under a new id (the
API's ``PUT`` is an update-or-create, FHIR R4 §3.1.0.4.1), and "someone else's" is the same
not-found page as "missing" for every step (the API's 403 and 404 both become the 404 page).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from middleware.web.api import Answer
from middleware.web.calls import expect, path_id
from middleware.web.choices import (
    KIND_CHOICES,
    LABEL_CHOICES,
    PURPOSE_CHOICES,
    Choices,
    build_consent,
    choices_of,
    read_choices,
)
from middleware.web.csrf import checked_form
from middleware.web.deps import WebDeps
from middleware.web.describe import KINDS, LABELS, PURPOSES, describe
from middleware.web.render import page
from middleware.web.session import WebSession, require
from middleware.web.text import t

__all__ = ["routes"]

_DEFAULT = Choices(decision="deny", who="practitioner")


def routes(deps: WebDeps) -> list[BaseRoute]:
    """The create, change and revoke routes."""
    base = deps.settings.base_path

    def today() -> date:
        return datetime.fromtimestamp(deps.clock(), UTC).date()

    async def new_form(request: Request) -> Response:
        session = await require(request, "patient")
        choices = _DEFAULT
        if request.method == "POST":  # "change my choices" from the confirmation page
            form = await checked_form(request, session)
            choices = read_choices(form, today())[0] or _DEFAULT
        return _form(request, session, choices, "/portal/consents/new")

    async def new_review(request: Request) -> Response:
        session = await require(request, "patient")
        form = await checked_form(request, session)
        choices, problems = read_choices(form, today())
        if choices is None:
            return _form(request, session, _DEFAULT, "/portal/consents/new", form, problems)
        after = describe(build_consent(choices, session.subject, today()))
        return _review(request, session, choices, "/portal/consents/new", None, after)

    async def new_save(request: Request) -> Response:
        session = await require(request, "patient")
        form = await checked_form(request, session)
        choices, problems = read_choices(form, today())
        if choices is None:
            return _form(request, session, _DEFAULT, "/portal/consents/new", form, problems)
        consent = build_consent(choices, session.subject, today())
        answer = await deps.api.post(session, f"{base}/Consent", consent)
        created = expect(answer, "patient", 201, 200)
        return _done(request, session, "portal.done.created", created, answer[2])

    async def own_active(session: WebSession, consent_id: str) -> Any:
        """The patient's own active consent ``consent_id``; else the not-found page."""
        current = _own(await deps.api.get(session, f"{base}/Consent/{consent_id}"))
        if not isinstance(current, dict) or current.get("status") != "active":
            raise HTTPException(404)
        return current

    async def change_form(request: Request) -> Response:
        session = await require(request, "patient")
        consent_id = _consent_id(request)
        current = await own_active(session, consent_id)
        choices = choices_of(current) or _DEFAULT
        if request.method == "POST":  # "change my answers" from the confirmation page
            form = await checked_form(request, session)
            choices = read_choices(form, today())[0] or choices
        return _form(request, session, choices, f"/portal/consents/{consent_id}")

    async def change_review(request: Request) -> Response:
        session = await require(request, "patient")
        consent_id = _consent_id(request)
        form = await checked_form(request, session)
        action = f"/portal/consents/{consent_id}"
        answer = await deps.api.get(session, f"{base}/Consent/{consent_id}")
        current = _own(answer)
        choices, problems = read_choices(form, today())
        if choices is None:
            return _form(request, session, _DEFAULT, action, form, problems)
        after = describe(build_consent(choices, session.subject, today()))
        etag = answer[2].get("etag", "")
        return _review(request, session, choices, action, describe(current), after, etag)

    async def change_save(request: Request) -> Response:
        session = await require(request, "patient")
        consent_id = _consent_id(request)
        form = await checked_form(request, session)
        choices, problems = read_choices(form, today())
        if choices is None:
            action = f"/portal/consents/{consent_id}"
            return _form(request, session, _DEFAULT, action, form, problems)
        # Read first: a PUT to an id that does not exist would create it, and one to another
        # patient's consent answers 403; both must be the same not-found page.
        await own_active(session, consent_id)
        consent = build_consent(choices, session.subject, today(), consent_id=consent_id)
        etag = str(form.get("etag", ""))
        headers = {"if-match": etag} if etag.startswith('W/"') and len(etag) < 40 else None
        answer = await deps.api.put(session, f"{base}/Consent/{consent_id}", consent, headers)
        if answer[0] in (409, 412):
            return _message(request, session, "portal.stale.title", "portal.stale.text", 409)
        changed = _own(answer, 200)
        return _done(request, session, "portal.done.changed", changed, answer[2])

    async def revoke_review(request: Request) -> Response:
        session = await require(request, "patient")
        consent_id = _consent_id(request)
        current = await own_active(session, consent_id)
        context = {
            "title": t("portal.revoke.title"),
            "session": session,
            "before": describe(current),
            "action": f"/portal/consents/{consent_id}/revoke",
        }
        return page(request, "portal/revoke.html", context)

    async def revoke_save(request: Request) -> Response:
        session = await require(request, "patient")
        consent_id = _consent_id(request)
        await checked_form(request, session)
        await own_active(session, consent_id)
        answer = await deps.api.post(session, f"{base}/Consent/{consent_id}/$revoke")
        revoked = _own(answer, 200)
        return _done(request, session, "portal.done.revoked", revoked, answer[2])

    return [
        Route("/portal/consents/new", new_form, methods=["GET", "POST"]),
        Route("/portal/consents/new/review", new_review, methods=["POST"]),
        Route("/portal/consents/new/save", new_save, methods=["POST"]),
        Route("/portal/consents/{consent_id}/change", change_form, methods=["GET", "POST"]),
        Route("/portal/consents/{consent_id}/review", change_review, methods=["POST"]),
        Route("/portal/consents/{consent_id}/save", change_save, methods=["POST"]),
        Route("/portal/consents/{consent_id}/revoke", revoke_review, methods=["GET"]),
        Route("/portal/consents/{consent_id}/revoke", revoke_save, methods=["POST"]),
    ]


def _own(answer: Answer, *statuses: int) -> Any:
    """:func:`expect` for a patient's call on one consent, where the API's 403 ("not
    yours") is the not-found page like its 404, so the page never tells the two apart."""
    if answer[0] == 403:
        raise HTTPException(404)
    return expect(answer, "patient", *statuses)


def _consent_id(request: Request) -> str:
    return path_id(request, "consent_id")


def _form(  # noqa: PLR0917 - one private helper's call sites read best positionally
    request: Request,
    session: WebSession,
    choices: Choices,
    action: str,
    form: FormData | None = None,
    problems: list[str] | None = None,
) -> Response:
    if form is not None:  # show what was sent back, with the problems
        chosen = {name: form.getlist(name) for name in ("kind", "label")}
        values: dict[str, Any] = {k: str(form.get(k, "")) for k in _FIELDS}
    else:
        chosen = {"kind": list(choices.kinds), "label": list(choices.labels)}
        values = dict(choices.fields())
    context = {
        "title": t("portal.form.title.new")
        if action.endswith("/new")
        else t("portal.form.title.change"),
        "session": session,
        "action": action,
        "values": values,
        "chosen": chosen,
        "problems": [t(key) for key in problems or []],
        "kinds": [(k, t(KINDS[k])) for k in KIND_CHOICES],
        "labels": [(k, t(LABELS[k])) for k in LABEL_CHOICES],
        "purposes": [(p, t(PURPOSES[p])) for p in PURPOSE_CHOICES],
    }
    return page(request, "portal/form.html", context, status=400 if problems else 200)


_FIELDS = ("decision", "who", "who_id", "what", "purpose", "until")


def _review(  # noqa: PLR0917 - as _form
    request: Request,
    session: WebSession,
    choices: Choices,
    action: str,
    before: list[str] | None,
    after: list[str],
    etag: str = "",
) -> Response:
    fields = choices.fields() + ([("etag", etag)] if etag else [])
    context = {
        "title": t("portal.review.title"),
        "session": session,
        "before": before,
        "after": after,
        "fields": fields,
        "save": action + "/save",
        "back": action if action.endswith("/new") else action + "/change",
        "problems": [],
    }
    return page(request, "portal/review.html", context)


def _done(
    request: Request, session: WebSession, what: str, resource: Any, headers: Any
) -> Response:
    index = headers.get("x-consentry-ledger-index", "")
    context = {
        "title": t("portal.done.title"),
        "session": session,
        "what": t(what),
        "sentences": describe(resource) if isinstance(resource, dict) else [],
        "index": int(index) if index.isdigit() else None,
        "consent_id": str(resource.get("id", "")) if isinstance(resource, dict) else "",
    }
    return page(request, "portal/done.html", context)


def _message(request: Request, session: WebSession, title: str, text: str, status: int) -> Response:
    context = {
        "title": t(title),
        "session": session,
        "lines": [t(text)],
        "link": "/portal/",
        "link_text": t("portal.nav.home"),
    }
    return page(request, "message.html", context, status=status)
