"""A fake WeCom (企业微信) server that behaves like WeCom, for tests and the demo.

It keeps state and enforces the rules sopbot depends on, each with the WeCom API
page it comes from (developer.work.weixin.qq.com/document/path/<n>):

- access tokens expire (42001) and unknown tokens are invalid (40014);
- a welcome code is usable once, about 20 s after the ``add_external_contact``
  event, and is not issued when the member has a console welcome configured;
- a mass-send task waits for the staff member's confirmation; at confirmation
  each customer (or group) either receives it, is not a friend any more, or has
  used its mass-send quota (``days_of_month`` by default, ``7_per_week`` or
  ``1_per_day``), counted per customer across every staff member;
- tasks can be cancelled (what was delivered stays) and nudged (3 a day a task);
- moments are an asynchronous job; each member publishes (or not) in the client;
- contacts carry corp tags per following member, changed by ``mark_tag``.

Reach it through :meth:`FakeWeCom.transport` (an ``httpx.MockTransport``) or
:meth:`FakeWeCom.asgi_app` (serve it on a local port for the demo). What staff
members do in the WeCom client (add a customer, confirm a task, publish a
moment, set a tag) are the Python methods in the "client side" section.
``calls`` counts API calls per path (the benchmark reads it).
"""

from __future__ import annotations

import calendar
import itertools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from sopbot.clock import Clock

DOC = "https://developer.work.weixin.qq.com/document/path/"

# gettoken: a token is valid for expires_in (7200 s) -- DOC 91039.
TOKEN_TTL = timedelta(seconds=7200)
# Global error codes -- DOC 90313.
ERR_INVALID_CREDENTIAL = 40001
ERR_INVALID_TOKEN = 40014
ERR_TOKEN_EXPIRED = 42001
ERR_INVALID_PARAM = 40058
ERR_NOT_FOUND = 84061  # "not external contact" (DOC 90313)
# send_welcome_msg: "the welcome code is valid for 20 seconds" and a code may be
# used once -- DOC 92137. The fake answers 41051 for a code used already (or a
# customer who already chatted) and 41096 for a code that is unknown or expired.
WELCOME_VALIDITY = timedelta(seconds=20)
# DOC 90253 (media/upload): image ≤ 10 MB, file ≤ 20 MB, at least 5 bytes; a media
# id lives 3 days. DOC 90313: 40004 invalid media type, 40007 invalid media_id,
# 40005 invalid file type / size.
ERR_MEDIA_TYPE = 40004
ERR_MEDIA_SIZE = 40005
ERR_MEDIA_ID = 40007
MEDIA_LIMITS = {"image": 10 * 1024 * 1024, "file": 20 * 1024 * 1024}
MEDIA_TTL = timedelta(days=3)
ERR_WELCOME_USED = 41051
ERR_WELCOME_INVALID = 41096
# add_msg_template: at most 10,000 customers or 2,000 groups a task, text up to
# 4,000 bytes, 9 attachments -- DOC 92135.
MAX_CUSTOMERS = 10_000
MAX_GROUPS = 2_000
MAX_TEXT_BYTES = 4_000
MAX_ATTACHMENTS = 9
# remind_groupmsg_send: "each task can be reminded at most 3 times a day" -- DOC 97610.
MAX_REMINDS_PER_DAY = 3
ERR_REMIND_LIMIT = 41102
# add_moment_task: up to 9 images, or one video, or one link -- DOC 95094.
MAX_MOMENT_IMAGES = 9

# get_groupmsg_send_result status -- DOC 93338: 0 not sent yet, 1 sent,
# 2 not a friend, 3 the customer already received another mass message.
PENDING, SENT, NOT_FRIEND, QUOTA_USED = 0, 1, 2, 3

# The admin's mass-send quota per customer/group (客户联系 → 群发 frequency) -- DOC 92135.
QUOTA_PRESETS = ("days_of_month", "7_per_week", "1_per_day")

ZONE = ZoneInfo("Asia/Shanghai")  # WeCom counts days in China time


class _Reply(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errmsg)
        self.errcode = errcode
        self.errmsg = errmsg


@dataclass
class _WelcomeCode:
    userid: str
    external_userid: str
    issued_at: datetime
    used: bool = False


@dataclass
class _Task:
    msgid: str
    sender: str
    chat_type: str
    targets: list[str]
    content: dict[str, Any]
    created_at: datetime
    status: dict[str, int] = field(default_factory=dict)
    send_time: dict[str, int] = field(default_factory=dict)
    confirmed: bool = False
    cancelled: bool = False
    reminds: Counter[date] = field(default_factory=Counter)


@dataclass
class _Moment:
    moment_id: str
    creator: str
    members: list[str]
    tags: list[str]
    content: dict[str, Any]
    published: dict[str, int] = field(default_factory=dict)  # userid -> 0/1


class FakeWeCom:
    """State plus rules of one WeCom corp."""

    def __init__(
        self,
        clock: Clock,
        *,
        corp_id: str = "ww_corp",
        corp_secret: str = "corp-secret",
        quota: str = "days_of_month",
    ) -> None:
        if quota not in QUOTA_PRESETS:
            raise ValueError(f"quota must be one of {', '.join(QUOTA_PRESETS)}")
        self.clock = clock
        self.corp_id = corp_id
        self.corp_secret = corp_secret
        self.quota = quota
        self.calls: Counter[str] = Counter()
        self.tokens: dict[str, datetime] = {}
        # external_userid -> {"name": ..., "follow": {userid: set(tag_id)}}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, str] = {}  # chat_id -> owner
        self.console_welcome: set[str] = set()  # members with a console welcome
        self.welcome_codes: dict[str, _WelcomeCode] = {}
        self.welcomes: list[dict[str, Any]] = []  # what send_welcome_msg delivered
        # media id -> (type, file name, bytes, uploaded at): media/upload
        self.media: dict[str, tuple[str, str, bytes, datetime]] = {}
        self.tasks: dict[str, _Task] = {}
        self.received: dict[str, list[datetime]] = {}  # customer/group -> mass messages
        self.tag_groups: dict[str, dict[str, Any]] = {}  # group_id -> {name, tags{id: name}}
        self.moment_jobs: dict[str, str] = {}  # jobid -> moment_id
        self.moments: dict[str, _Moment] = {}
        self.app_messages: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    # -- client side: what happens in the WeCom client ---------------------------

    def add_contact(
        self, userid: str, external_userid: str, *, name: str = "", tags: tuple[str, ...] = ()
    ) -> str | None:
        """A customer befriends ``userid``; returns the event's WelcomeCode, None
        when the member has a console welcome (no code is issued -- DOC 92130)."""
        contact = self.contacts.setdefault(external_userid, {"name": name, "follow": {}})
        contact["follow"][userid] = set(tags)
        if userid in self.console_welcome:
            return None
        code = f"wc{next(self._ids)}"
        self.welcome_codes[code] = _WelcomeCode(userid, external_userid, self.clock.now())
        return code

    def remove_contact(self, userid: str, external_userid: str) -> None:
        self.contacts.get(external_userid, {}).get("follow", {}).pop(userid, None)

    def add_group(self, chat_id: str, owner: str) -> None:
        self.groups[chat_id] = owner

    def add_corp_tag(self, group_name: str, tag_name: str) -> str:
        """An admin adds a tag to the corp library (a change_external_tag event follows)."""
        group = next((g for g in self.tag_groups.values() if g["name"] == group_name), None)
        if group is None:
            group = self.tag_groups[f"et_group{next(self._ids)}"] = {"name": group_name, "tags": {}}
        for tag_id, name in group["tags"].items():
            if name == tag_name:
                return str(tag_id)
        tag_id = f"et{next(self._ids)}"
        group["tags"][tag_id] = tag_name
        return tag_id

    def rename_corp_tag_group(self, old: str, new: str) -> None:
        """An admin renames a tag group in the WeCom console (``edit_corp_tag``
        on the group id; a ``change_external_tag`` event follows)."""
        for group in self.tag_groups.values():
            if group["name"] == old:
                group["name"] = new

    def staff_sets_tag(
        self, userid: str, external_userid: str, tag_id: str, *, add: bool = True
    ) -> None:
        """A member edits the customer's tags in the client (an edit_external_contact
        callback follows; the tags themselves are not in it -- DOC 92130)."""
        tags = self.contacts[external_userid]["follow"][userid]
        (tags.add if add else tags.discard)(tag_id)

    def confirm(self, msgid: str, userid: str | None = None) -> dict[str, int]:
        """The staff member presses 发送: each target gets it, or not (why: the status)."""
        task = self.tasks[msgid]
        if userid is not None and userid != task.sender:
            raise ValueError(f"{userid} is not the sender of {msgid}")
        if task.cancelled or task.confirmed:
            return dict(task.status)
        task.confirmed = True
        now = self.clock.now()
        for target in task.targets:
            if task.chat_type == "single" and task.sender not in self.contacts.get(target, {}).get(
                "follow", {}
            ):
                task.status[target] = NOT_FRIEND
            elif not self._quota_left(target, now):
                task.status[target] = QUOTA_USED
            else:
                task.status[target] = SENT
                self.received.setdefault(target, []).append(now)
            task.send_time[target] = int(now.timestamp())
        return dict(task.status)

    def publish_moment(self, moment_id: str, userid: str) -> None:
        """A member publishes the moment from the client."""
        self.moments[moment_id].published[userid] = 1

    def expire_tokens(self) -> None:
        """Every issued token expires now (WeCom may also revoke them early)."""
        now = self.clock.now()
        self.tokens = {token: now for token in self.tokens}

    # -- rules -----------------------------------------------------------------

    def _quota_left(self, target: str, now: datetime) -> bool:
        """Per customer/group, across all members and tasks -- DOC 92135."""
        local = now.astimezone(ZONE).date()
        if self.quota == "1_per_day":
            first, last, limit = local, local + timedelta(days=1), 1
        elif self.quota == "7_per_week":
            first = local - timedelta(days=local.weekday())
            last, limit = first + timedelta(days=7), 7
        else:
            days = calendar.monthrange(local.year, local.month)[1]
            first = local.replace(day=1)
            last, limit = first + timedelta(days=days), days
        used = sum(
            1 for t in self.received.get(target, []) if first <= t.astimezone(ZONE).date() < last
        )
        return used < limit

    def _check_token(self, params: dict[str, str]) -> None:
        token = params.get("access_token", "")
        expires = self.tokens.get(token)
        if expires is None:
            raise _Reply(ERR_INVALID_TOKEN, "invalid access_token")
        if self.clock.now() >= expires:
            raise _Reply(ERR_TOKEN_EXPIRED, "access_token expired")

    # -- HTTP -----------------------------------------------------------------

    def handle(
        self, method: str, path: str, params: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        """One API call: the JSON WeCom would answer."""
        self.calls[path] += 1
        try:
            if path == "gettoken":
                return self._gettoken(params)
            self._check_token(params)
            handler = self._routes().get((method, path))
            if handler is None:
                raise _Reply(ERR_INVALID_PARAM, f"{method} {path} is not served by the fake")
            return {"errcode": 0, "errmsg": "ok", **handler(params, body)}
        except _Reply as reply:
            return {"errcode": reply.errcode, "errmsg": reply.errmsg}

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.split("/cgi-bin/", 1)[-1]
        body = _body(request.headers.get("content-type", ""), request.read())
        return httpx.Response(
            200, json=self.handle(request.method, path, dict(request.url.params), body)
        )

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def asgi_app(self) -> Callable[..., Any]:
        """The same server as an ASGI app (``uvicorn`` it for the demo)."""
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def endpoint(request: Request) -> JSONResponse:
            body = _body(request.headers.get("content-type", ""), await request.body())
            path = request.path_params["path"]
            return JSONResponse(self.handle(request.method, path, dict(request.query_params), body))

        return Starlette(routes=[Route("/cgi-bin/{path:path}", endpoint, methods=["GET", "POST"])])

    def _upload(self, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 90253: a multipart body with one file in field ``media``
        media_type = params.get("type", "")
        if media_type not in MEDIA_LIMITS:
            raise _Reply(ERR_MEDIA_TYPE, f"invalid media type {media_type!r}")
        content_type, raw = body.get(MULTIPART, ("", b""))
        name, data = _multipart_file(content_type, raw, "media")
        if len(data) < 5 or len(data) > MEDIA_LIMITS[media_type]:
            raise _Reply(ERR_MEDIA_SIZE, f"invalid file size {len(data)}")
        media_id = f"media{next(self._ids)}"
        self.media[media_id] = (media_type, name, data, self.clock.now())
        created = str(int(self.clock.now().timestamp()))
        return {"type": media_type, "media_id": media_id, "created_at": created}

    def _check_media(self, body: dict[str, Any]) -> None:
        """Attachments naming media must name media uploaded in the last 3 days."""
        for attachment in body.get("attachments") or []:
            kind = attachment.get("msgtype")
            inner = attachment.get(kind) or {}
            media_id = inner.get("pic_media_id") if kind == "miniprogram" else inner.get("media_id")
            if kind in ("miniprogram", "file") and not media_id:
                raise _Reply(ERR_INVALID_PARAM, f"{kind} attachment needs a media id")
            if media_id and kind in ("miniprogram", "file", "image"):
                found = self.media.get(str(media_id))
                if found is None or self.clock.now() - found[3] > MEDIA_TTL:
                    raise _Reply(ERR_MEDIA_ID, f"invalid media_id {media_id}")

    def _routes(
        self,
    ) -> dict[tuple[str, str], Callable[[dict[str, str], dict[str, Any]], dict[str, Any]]]:
        return {
            ("POST", "externalcontact/send_welcome_msg"): self._send_welcome,
            ("POST", "externalcontact/add_msg_template"): self._add_msg_template,
            ("POST", "externalcontact/get_groupmsg_task"): self._get_task,
            ("POST", "externalcontact/get_groupmsg_send_result"): self._send_result,
            ("POST", "externalcontact/cancel_groupmsg_send"): self._cancel,
            ("POST", "externalcontact/remind_groupmsg_send"): self._remind,
            ("GET", "externalcontact/get"): self._get_contact,
            ("POST", "externalcontact/mark_tag"): self._mark_tag,
            ("POST", "externalcontact/get_corp_tag_list"): self._corp_tags,
            ("POST", "externalcontact/add_moment_task"): self._add_moment,
            ("GET", "externalcontact/get_moment_task_result"): self._moment_result,
            ("POST", "externalcontact/get_moment_task"): self._moment_task,
            ("POST", "message/send"): self._app_message,
            ("POST", "media/upload"): self._upload,
        }

    def _gettoken(self, params: dict[str, str]) -> dict[str, Any]:
        # DOC 91039: wrong corpid/secret is 40013/40001.
        if params.get("corpid") != self.corp_id or params.get("corpsecret") != self.corp_secret:
            return {"errcode": ERR_INVALID_CREDENTIAL, "errmsg": "invalid credential"}
        token = f"tok{next(self._ids)}"
        self.tokens[token] = self.clock.now() + TOKEN_TTL
        return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}

    def _send_welcome(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 92137: one use, within 20 s of the event.
        code = self.welcome_codes.get(str(body.get("welcome_code", "")))
        if code is None or self.clock.now() - code.issued_at > WELCOME_VALIDITY:
            raise _Reply(ERR_WELCOME_INVALID, "invalid welcome_code (unknown or expired)")
        if code.used:
            raise _Reply(ERR_WELCOME_USED, "welcome message already sent for this code")
        _check_content(body)
        self._check_media(body)
        code.used = True
        self.welcomes.append(
            {"userid": code.userid, "external_userid": code.external_userid, **body}
        )
        return {}

    def _add_msg_template(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 92135
        chat_type = body.get("chat_type", "single")
        sender = str(body.get("sender") or "")
        if chat_type == "group":
            targets = list(body.get("chat_id_list") or [])
            if len(targets) > MAX_GROUPS:
                raise _Reply(ERR_INVALID_PARAM, f"chat_id_list has more than {MAX_GROUPS}")
            fail = [t for t in targets if self.groups.get(t) not in (None, sender)]
        else:
            targets = list(body.get("external_userid") or [])
            if len(targets) > MAX_CUSTOMERS:
                raise _Reply(ERR_INVALID_PARAM, f"external_userid has more than {MAX_CUSTOMERS}")
            fail = [t for t in targets if sender not in self.contacts.get(t, {}).get("follow", {})]
        if not sender:
            raise _Reply(ERR_INVALID_PARAM, "sender is required")
        _check_content(body)
        self._check_media(body)
        msgid = f"msg{next(self._ids)}"
        kept = [t for t in targets if t not in fail]
        self.tasks[msgid] = _Task(
            msgid, sender, chat_type, kept, body, self.clock.now(), {t: PENDING for t in kept}
        )
        return {"msgid": msgid, "fail_list": fail}

    def _task(self, body: dict[str, Any]) -> _Task:
        task = self.tasks.get(str(body.get("msgid", "")))
        if task is None:
            raise _Reply(ERR_INVALID_PARAM, "invalid msgid")
        return task

    def _get_task(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 93338: per member, 0 not sent yet / 2 sent.
        task = self._task(body)
        row: dict[str, Any] = {"userid": task.sender, "status": 2 if task.confirmed else 0}
        if task.confirmed:
            row["send_time"] = max(task.send_time.values(), default=0)
        return {"task_list": [row], "next_cursor": ""}

    def _send_result(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 93338: pages of up to 1,000, a cursor.
        task = self._task(body)
        start = int(body.get("cursor") or 0)
        limit = min(int(body.get("limit") or 500), 1000)
        key = "chat_id" if task.chat_type == "group" else "external_userid"
        page = task.targets[start : start + limit]
        rows = [
            {
                key: t,
                "userid": task.sender,
                "status": task.status[t],
                **({"send_time": task.send_time[t]} if t in task.send_time else {}),
            }
            for t in page
        ]
        more = start + limit < len(task.targets)
        return {"send_list": rows, "next_cursor": str(start + limit) if more else ""}

    def _cancel(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 97610: stops what was not sent yet; delivered messages stay.
        self._task(body).cancelled = True
        return {}

    def _remind(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 97610: at most 3 reminders a day per task.
        task = self._task(body)
        today = self.clock.now().astimezone(ZONE).date()
        if task.reminds[today] >= MAX_REMINDS_PER_DAY:
            raise _Reply(ERR_REMIND_LIMIT, "remind limit reached: 3 times a day per task")
        task.reminds[today] += 1
        return {}

    def _get_contact(self, params: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
        # DOC 92114: follow_user carries each member's corp tags for the customer.
        external = params.get("external_userid", "")
        contact = self.contacts.get(external)
        if contact is None:
            raise _Reply(ERR_NOT_FOUND, "not external contact")
        names = self._tag_names()
        follow = [
            {
                "userid": userid,
                "tags": [
                    {"group_name": names[t][0], "tag_name": names[t][1], "tag_id": t, "type": 1}
                    for t in sorted(tags)
                    if t in names
                ],
            }
            for userid, tags in contact["follow"].items()
        ]
        return {
            "external_contact": {"external_userid": external, "name": contact["name"]},
            "follow_user": follow,
        }

    def _tag_names(self) -> dict[str, tuple[str, str]]:
        return {
            tag_id: (group["name"], name)
            for group in self.tag_groups.values()
            for tag_id, name in group["tags"].items()
        }

    def _mark_tag(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 92118: tags must exist in the corp library; no callback follows.
        names = self._tag_names()
        wanted = [*body.get("add_tag", []), *body.get("remove_tag", [])]
        unknown = [t for t in wanted if t not in names]
        if unknown:
            raise _Reply(ERR_INVALID_PARAM, f"unknown tag id {unknown[0]}")
        contact = self.contacts.get(str(body.get("external_userid", "")))
        if contact is None or body.get("userid") not in contact["follow"]:
            raise _Reply(ERR_NOT_FOUND, "not external contact")
        tags = contact["follow"][body["userid"]]
        tags.update(body.get("add_tag", []))
        tags.difference_update(body.get("remove_tag", []))
        return {}

    def _corp_tags(self, _: dict[str, str], __: dict[str, Any]) -> dict[str, Any]:
        # DOC 92117
        return {
            "tag_group": [
                {
                    "group_id": group_id,
                    "group_name": group["name"],
                    "tag": [{"id": t, "name": n} for t, n in group["tags"].items()],
                }
                for group_id, group in self.tag_groups.items()
            ]
        }

    def _add_moment(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 95094: asynchronous; text plus 9 images, or a video, or a link.
        attachments = body.get("attachments") or []
        kinds = {a.get("msgtype") for a in attachments}
        if (
            len(kinds) > 1
            or (kinds & {"video", "link"} and len(attachments) > 1)
            or len(attachments) > MAX_MOMENT_IMAGES
        ):
            raise _Reply(ERR_INVALID_PARAM, "attachments: up to 9 images, or 1 video, or 1 link")
        if not attachments and not (body.get("text") or {}).get("content"):
            raise _Reply(ERR_INVALID_PARAM, "empty moment")
        visible = body.get("visible_range") or {}
        members = list((visible.get("sender_list") or {}).get("user_list") or [])
        tags = list((visible.get("external_contact_list") or {}).get("tag_list") or [])
        if not members:
            members = sorted({u for c in self.contacts.values() for u in c["follow"]})
        jobid = f"job{next(self._ids)}"
        moment_id = f"mom{next(self._ids)}"
        self.moment_jobs[jobid] = moment_id
        self.moments[moment_id] = _Moment(
            moment_id,
            members[0] if members else "",
            members,
            tags,
            body,
            {m: 0 for m in members},
        )
        return {"jobid": jobid}

    def _moment_result(self, params: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
        # DOC 95094: status 1 started, 2 processing, 3 done, with the moment_id.
        moment_id = self.moment_jobs.get(params.get("jobid", ""))
        if moment_id is None:
            raise _Reply(ERR_INVALID_PARAM, "invalid jobid")
        return {
            "status": 3,
            "type": "add_moment_task",
            "result": {"errcode": 0, "errmsg": "ok", "moment_id": moment_id},
        }

    def _moment_task(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        # DOC 93333: per member, publish_status 0 not published / 1 published.
        moment = self.moments.get(str(body.get("moment_id", "")))
        if moment is None:
            raise _Reply(ERR_INVALID_PARAM, "invalid moment_id")
        return {
            "task_list": [{"userid": u, "publish_status": s} for u, s in moment.published.items()],
            "next_cursor": "",
        }

    def _app_message(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        self.app_messages.append(body)
        return {"invaliduser": "", "msgid": f"app{next(self._ids)}"}


def _check_content(body: dict[str, Any]) -> None:
    text = (body.get("text") or {}).get("content", "")
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise _Reply(ERR_INVALID_PARAM, f"text longer than {MAX_TEXT_BYTES} bytes")
    if len(body.get("attachments") or []) > MAX_ATTACHMENTS:
        raise _Reply(ERR_INVALID_PARAM, f"more than {MAX_ATTACHMENTS} attachments")
    if not text and not body.get("attachments"):
        raise _Reply(ERR_INVALID_PARAM, "empty message")


MULTIPART = "_multipart"  # a request body that is not JSON: (content type, raw bytes)


def _body(content_type: str, raw: bytes) -> dict[str, Any]:
    """A request's JSON body; a multipart one is kept raw for the route to read."""
    if content_type.startswith("multipart/"):
        return {MULTIPART: (content_type, raw)}
    return json.loads(raw) if raw else {}


def _multipart_file(content_type: str, raw: bytes, field: str) -> tuple[str, bytes]:
    """The file name and bytes of form field ``field`` of a multipart body."""
    import email.parser
    import email.policy

    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise _Reply(ERR_INVALID_PARAM, "media/upload needs a multipart/form-data body")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == field:
            payload = part.get_payload(decode=True)
            return str(part.get_filename() or ""), payload if isinstance(payload, bytes) else b""
    raise _Reply(ERR_INVALID_PARAM, f"no form field {field!r}")
