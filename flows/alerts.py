"""Alerts that reach a person: a run of the distillery flow that failed, crashed or timed out, and a published
version that the promotion gate did not promote. Prefect automations send them through a notification block, a
Custom Webhook that posts `{"text": SUBJECT: BODY}` (Slack's incoming webhooks take it as it is; Slack, Teams and
e-mail blocks are the same kind of block, so an automation can be pointed at one in the UI). The Prefect server
delivers them: a webhook that cannot be reached is logged by the server and never fails a run.

`distillery serve` (or `distillery alerts`, for deployments made with `prefect deploy`) creates the block and the
automations where DISTILLERY_ALERT_WEBHOOK names the webhook's URL; without it, alerts are off."""

import os
from datetime import timedelta

from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.events import emit_event
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

WEBHOOK_ENV = "DISTILLERY_ALERT_WEBHOOK"
BLOCK = "distillery-alerts"
FLOW = "distillery"  # the flow's name, as flows.pipeline declares it
NOT_PROMOTED = "distillery.model.not-promoted"


def triggers() -> dict[str, tuple[EventTrigger, str, str]]:
    """Each automation by name: what triggers it, and its message's subject and body (Jinja, as Prefect fills them)."""
    return {
        "distillery-run-failed": (
            EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            "Distillery run failed",
            "Flow run {{ flow_run.name }} of {{ flow.name }} ended {{ flow_run.state.name }}: "
            "{{ flow_run.state.message }}",
        ),
        "distillery-not-promoted": (
            EventTrigger(
                expect={NOT_PROMOTED},
                match={"prefect.resource.id": "distillery.model.*"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            "Distillery model not promoted",
            "{{ event.payload.name }} {{ event.payload.version }} was published and not promoted: "
            "{{ event.payload.reason }}. Users still get {{ event.payload.champion }}.",
        ),
    }


def install(webhook_url: str) -> list[str]:
    """Create the notification block and the automations, replacing those of the same names. Returns the names."""
    block = CustomWebhookNotificationBlock(  # the URL is a credential (Slack's are): kept among the block's secrets
        name=BLOCK, url="{{url}}", secrets={"url": webhook_url}, json_data={"text": "{{subject}}: {{body}}"}
    )
    block_id = block.save(BLOCK, overwrite=True)
    for name, (trigger, subject, body) in triggers().items():
        try:
            Automation.read(name=name).delete()
        except ValueError:  # none of that name yet
            pass
        Automation(
            name=name,
            trigger=trigger,
            actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)],
        ).create()
    return list(triggers())


def install_from_env() -> str:
    """`install` with the webhook DISTILLERY_ALERT_WEBHOOK names; what was done, in a line."""
    url = os.environ.get(WEBHOOK_ENV)
    if not url:
        return f"alerts off: set {WEBHOOK_ENV} to a webhook URL to be told of failed runs and refused models"
    return f"alerts on: {', '.join(install(url))} post to the {BLOCK} block"


def announce_not_promoted(receipt: dict) -> None:
    """The event the not-promoted automation reacts to, from a publish receipt whose version was not promoted."""
    decided = receipt["promotion"]
    emit_event(
        event=NOT_PROMOTED,
        resource={
            "prefect.resource.id": f"distillery.model.{receipt['name']}",
            "prefect.resource.name": receipt["name"],
        },
        payload={
            "name": receipt["name"],
            "version": receipt["version"],
            "reason": decided["reason"],
            "champion": decided["champion"] or "no promoted version yet",
        },
    )
