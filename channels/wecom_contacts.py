"""WeCom customer data and task upkeep: corp tags, a customer's tags per staff
member, writing tags back, and cancelling or nudging mass-send tasks.

- ``externalcontact/get`` lists, per following staff member, the customer's
  corp tags; the ``edit_external_contact`` callback carries none, so a tag set in
  the WeCom client is only seen by fetching the contact (document/path/92114).
- ``externalcontact/get_corp_tag_list``: the corp tag catalogue (92117).
- ``externalcontact/mark_tag``: add/remove corp tags; WeCom sends no callback for
  changes made through the API (92118).
- ``cancel_groupmsg_send`` stops what the staff member has not sent yet (what
  was delivered stays); ``remind_groupmsg_send`` nudges them, at most 3 times a
  day per task (97610).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from channels.wecom import WeComAPIError

if TYPE_CHECKING:
    from channels.wecom import WeComAdapter

MAX_REMINDS_PER_DAY = 3


async def corp_tags(adapter: WeComAdapter, *, refresh: bool = False) -> dict[str, str]:
    """Tag name → WeCom tag id (cached on the adapter until ``refresh``)."""
    if adapter._corp_tags is None or refresh:
        await corp_tag_groups(adapter)
    assert adapter._corp_tags is not None
    return adapter._corp_tags


async def corp_tag_groups(adapter: WeComAdapter) -> dict[str, list[str]]:
    """The corp tag catalogue as WeCom holds it now: tag group (标签组) name →
    its tag names, in WeCom's order. Refreshes the adapter's name → id cache."""
    data = await adapter._call("externalcontact/get_corp_tag_list", {})
    groups: dict[str, list[str]] = {}
    ids: dict[str, str] = {}
    for group in data.get("tag_group") or []:
        names = groups.setdefault(str(group.get("group_name") or ""), [])
        for tag in group.get("tag") or []:
            names.append(str(tag["name"]))
            ids[str(tag["name"])] = str(tag["id"])
    adapter._corp_tags = ids
    return groups


async def contact_tags(adapter: WeComAdapter, external_userid: str) -> dict[str, set[str]]:
    """Staff member → the customer's corp tag names as that member set them.

    An unknown or lost customer (errcode 84061) is ``{}``: no member follows them."""
    try:
        data = await adapter._call(
            "externalcontact/get", query={"external_userid": external_userid}
        )
    except WeComAPIError as exc:
        if "errcode 84061:" in exc.reason:
            return {}
        raise
    return {
        str(follow["userid"]): {
            str(tag["tag_name"]) for tag in follow.get("tags") or [] if int(tag.get("type", 1)) == 1
        }
        for follow in data.get("follow_user") or []
    }


async def mark_tags(
    adapter: WeComAdapter,
    userid: str,
    external_userid: str,
    *,
    add: list[str] = (),  # type: ignore[assignment]
    remove: list[str] = (),  # type: ignore[assignment]
) -> list[str]:
    """Write tags back to WeCom; returns the names WeCom does not know (not written)."""
    catalogue = await corp_tags(adapter)
    if any(n not in catalogue for n in [*add, *remove]):
        catalogue = await corp_tags(adapter, refresh=True)
    unknown = [n for n in [*add, *remove] if n not in catalogue]
    add_ids = [catalogue[n] for n in add if n in catalogue]
    remove_ids = [catalogue[n] for n in remove if n in catalogue]
    if add_ids or remove_ids:
        await adapter._call(
            "externalcontact/mark_tag",
            {
                "userid": userid,
                "external_userid": external_userid,
                "add_tag": add_ids,
                "remove_tag": remove_ids,
            },
        )
    return unknown


async def cancel_task(adapter: WeComAdapter, msgid: str) -> None:
    await adapter._call("externalcontact/cancel_groupmsg_send", {"msgid": msgid})


async def remind_task(adapter: WeComAdapter, msgid: str) -> None:
    await adapter._call("externalcontact/remind_groupmsg_send", {"msgid": msgid})
