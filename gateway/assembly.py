"""Build the gateway's services from the config: the domain half of the composition root.

``gateway/daemon.py`` owns the lifecycle (simulators, API, signals); this module only constructs the
service objects and knows which of them run background tasks, so the wiring can be read in one place and
tested without an HTTP server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import trio

from gateway.config import Config
from gateway.events import EventBus
from gateway.ivr.call_campaigns import CallCampaignService
from gateway.ivr.queue import QueueManager
from gateway.ivr.service import IvrService
from gateway.sms.campaigns import CampaignService
from gateway.sms.categories import Categories
from gateway.sms.consent import ConsentService, OptOutKeywordHook, OptOutPolicy
from gateway.sms.dispatcher import SmsDispatcher
from gateway.sms.providers import ProviderReportIntake, build_routes
from gateway.sms.replies import ReplyCorrelator, ReplyRules
from gateway.sms.routing import RoutePolicy
from gateway.sms.service import SmsService
from gateway.sms.template_store import TemplateStore
from gateway.verify import VerificationService
from gateway.voice.service import VoiceService
from gateway.webhooks import WebhookService


@dataclass
class Services:
    sms: SmsService
    dispatcher: SmsDispatcher
    routes: dict[str, Any]  # HTTP provider routes by name (aclose at shutdown)
    provider_reports: ProviderReportIntake
    consent: ConsentService
    templates: TemplateStore
    campaigns: CampaignService
    verifications: VerificationService
    webhooks: WebhookService | None
    queues: QueueManager
    ivr: IvrService
    voice: VoiceService | None
    call_campaigns: CallCampaignService | None

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every background task the services need (the modems are started by the daemon)."""
        await nursery.start(self.dispatcher.run)
        await nursery.start(self.campaigns.run)
        await nursery.start(self.verifications.run)
        if self.webhooks is not None:
            await nursery.start(self.webhooks.run)
        if self.voice is not None:
            await nursery.start(self.voice.run)
        if self.call_campaigns is not None:
            await nursery.start(self.call_campaigns.run)

    async def close(self) -> None:
        for route in self.routes.values():
            await route.aclose()


def voice_settings(config: Config):
    """The voice section with its relative paths resolved against ``gateway.data_dir``."""
    return config.voice.model_copy(update={"recordings_dir": config.resolve(config.voice.recordings_dir)})


def ivr_settings(config: Config):
    return config.ivr.model_copy(update={"recordings_dir": config.resolve(config.ivr.recordings_dir)})


async def build_services(config: Config, store: Any, bus: EventBus, modems: dict[str, Any],
                         devices: dict[str, Any], http: httpx.AsyncClient) -> Services:
    region = config.gateway.default_region
    categories = Categories.from_config(config.sms, config.gateway.timezone)
    policy = RoutePolicy.from_config(config.sms)
    routes = build_routes(config.sms.http_providers)
    sms = SmsService(store, bus, modems, settings=config.sms, region=region, providers=routes,
                     categories=categories, route_policy=policy)
    consent_settings = config.consent.with_categories(sms.categories)
    sms.add_submit_policy(OptOutPolicy(consent_settings))
    hooks = [ReplyCorrelator(config.replies),
             OptOutKeywordHook(consent_settings, send_later=sms.submit_nowait)]
    dispatcher = SmsDispatcher(store, bus, modems, settings=config.sms, region=region, service=sms,
                               providers=routes, categories=categories, route_policy=policy,
                               inbound_hooks=hooks)
    sms.attach_dispatcher(dispatcher)
    consent = ConsentService(store, consent_settings, region=region, reply_rules=ReplyRules(store))
    templates = TemplateStore(store, categories=categories.names(),
                              default_price_per_part=str(config.sms.costs.modem_part))
    await templates.seed()
    campaigns = CampaignService(store, bus, sms, templates, dispatcher=dispatcher,
                                reply_rules=ReplyRules(store), settings=config.campaigns)
    verifications = VerificationService(store, sms, templates, settings=config.verify, region=region)
    webhooks = WebhookService(store, bus, config.webhooks) if config.webhooks is not None else None
    queues = QueueManager(config.ivr.positions, publish=bus.publish)
    ivr = IvrService(store, publish=bus.publish, settings=ivr_settings(config), http=http, queues=queues)
    await ivr.start()
    voice = call_campaigns = None
    if devices:
        voice = VoiceService(store, bus, devices, voice_settings(config), on_answer=ivr.start_session,
                             http=http)
        call_campaigns = CallCampaignService(store, voice, settings=config.call_campaigns, bus=bus, ivr=ivr)
    return Services(
        sms=sms, dispatcher=dispatcher, routes=routes,
        provider_reports=ProviderReportIntake.from_entries(store, config.sms.http_providers),
        consent=consent, templates=templates, campaigns=campaigns, verifications=verifications,
        webhooks=webhooks,
        queues=queues, ivr=ivr, voice=voice, call_campaigns=call_campaigns,
    )
