"""Personal data routes, and who did what, opened at read time.

Read models hold a person only as a pseudonymous subject. `show_actors`
turns the subjects in rows into display names just before they are
answered (the name from the subject's sealed profile, or `erased`), and
adds the pseudonym beside each (`created_by_subject`); service actors pass
through as they are. `open_timeline_actors` opens the sealed names in
events' own metadata the same way.

Routes: read a subject's name and email (PERSONAL_DATA_READ), and erase a
subject (PERSONAL_DATA_ERASE): their key is destroyed, `SubjectErased` is
appended to the log, and `subject_keys` is vacuumed where the owner role is
configured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import JSONBody, PathParameter

from animus.errors import NotFoundError
from animus.personal import (
    ACTOR_NAME,
    SUBJECT_PATTERN,
    Erased,
    SubjectKeys,
    actor_subject,
    is_sealed,
    is_subject,
    open_with,
)
from commands.erasure import erase_subject
from contracts.api import ErasureReceipt, SubjectProfile
from contracts.commands import EraseSubject
from gateway.auth import PERMISSION_OPT, Permission
from gateway.routing import Services, command_context, problems

Subject = Annotated[
    str,
    PathParameter(
        description="Pseudonymous subject id",
        # documented, and checked by `_known_form` rather than by Litestar: a
        # POST's path errors came out as 422 invalid-body while the GET's
        # were 404; a malformed id is no such subject on both (404)
        schema_extra={"pattern": SUBJECT_PATTERN},
    ),
]


def _known_form(subject: str) -> str:
    """`subject`, if it has a subject id's form.

    Raises:
        NotFoundError: it does not: there is no such subject.
    """
    if not is_subject(subject):
        raise NotFoundError(
            "no such subject: a subject id is subj_ and 32 lower-case hex digits"
        )
    return subject


def _text(value: str | Erased | None) -> str | None:
    return None if value is None else str(value)


async def show_actors(
    subjects: SubjectKeys, rows: Sequence[Mapping[str, Any]], *fields: str
) -> list[dict[str, Any]]:
    """Rows with each subject in `fields` shown as a name, pseudonym beside.

    Raises:
        PersonalDataError: a subject has no key, or its profile does not open.
    """
    wanted = {row[f] for row in rows for f in fields if is_subject(row.get(f))}
    names = await subjects.names(wanted)
    shown = []
    for row in rows:
        out = dict(row)
        for field in fields:
            value = out.get(field)
            if is_subject(value):
                out[f"{field}_subject"] = value
                out[field] = _text(names[value])
        shown.append(out)
    return shown


async def show_actor(
    subjects: SubjectKeys, row: Mapping[str, Any], *fields: str
) -> dict[str, Any]:
    """One row, as `show_actors` shows it."""
    return (await show_actors(subjects, [row], *fields))[0]


async def open_timeline_actors(
    subjects: SubjectKeys, events: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Events with a person's actor as `{"subject", "name"}`, name opened
    from the event's own sealed field (or `erased`); services unchanged.

    Raises:
        PersonalDataError: a sealed name does not open, or has no key.
    """
    events = [dict(event) for event in events]
    wanted = {actor_subject(e.get("actor")) for e in events} - {None}
    keys = await subjects.data_keys(s for s in wanted if s)
    for event in events:
        actor = event.get("actor")
        subject = actor_subject(actor)
        if subject is None or not isinstance(actor, Mapping):
            continue
        sealed = actor.get("name")
        name = (
            open_with(keys[subject], sealed, ACTOR_NAME) if is_sealed(sealed) else None
        )
        event["actor"] = {"subject": subject, "name": _text(name)}
    return events


@get(
    "/personal-data/subjects/{subject:str}",
    opt={PERMISSION_OPT: Permission.PERSONAL_DATA_READ},
    responses=problems(404, 422),
)
async def get_subject(services: Services, subject: Subject) -> SubjectProfile:
    """A data subject's name and email, opened now; `erased` once erased."""
    profile = await services.subjects.profile(_known_form(subject))
    return SubjectProfile(
        subject=profile.subject,
        name=_text(profile.name),
        email=_text(profile.email),
        erased=profile.erased,
        created_at=profile.created_at,
        erased_at=profile.erased_at,
    )


@post(
    "/personal-data/subjects/{subject:str}/erasure",
    opt={PERMISSION_OPT: Permission.PERSONAL_DATA_ERASE},
    status_code=200,
    responses=problems(400, 404, 413, 422),
)
async def erase(
    request: Request[Any, Any, Any],
    services: Services,
    subject: Subject,
    data: JSONBody[EraseSubject | None] = None,
) -> ErasureReceipt:
    """Erase a data subject: destroy their key, so every sealed field of
    theirs (names, emails, client addresses) reads as erased for ever, and
    record a SubjectErased event. Erasing again changes nothing and says so
    (`already_erased`); a retry completes an erasure a failure left half done
    (`repaired`). The reason is kept in the log: no personal data. Nothing
    changes unless the subject id, the reason and the subject all check."""
    command = data or EraseSubject()
    result = await erase_subject(
        services.store,
        services.pool,
        command_context(request),
        _known_form(subject),
        reason=command.reason,
        owner_dsn=services.owner_dsn,
    )
    return ErasureReceipt.model_validate(result.as_json())


ROUTES = [get_subject, erase]
