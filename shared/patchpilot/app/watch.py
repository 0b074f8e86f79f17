"""The maintenance watch on the timer (docs/maintenance-watch.md): once an hour, and at the
policy's digest times, read what the cloud has scheduled; send an alert for each item due before
the next window, once per item and due time, and the digest once per digest time (the
announcer's durable claims, across containers; a post that failed is tried again at the next
read)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from patchpilot.app.overview import Overview
from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.ports import Announcer, MaintenanceSource

log = logging.getLogger("patchpilot.maintenance")
WATCH_READS = "cron(0 * * * ? *)"  # the maintenance watch reads the clouds hourly (UTC), not every tick
CLAIM_MARGIN = timedelta(days=7)  # a delivered notice is remembered this long past what it is about


class MaintenanceWatch:
    """Over the cloud's maintenance source and the announcer (each built on first use) and the
    (cached) discovery `discovered(policy, now)`."""

    def __init__(
        self,
        *,
        source: Callable[[], MaintenanceSource],
        announcer: Callable[[], Announcer],
        discovered: Callable[[Policy, datetime], list[Instance]],
        overview: Overview,
    ) -> None:
        self.source = source
        self.announcer = announcer
        self.discovered = discovered
        self.overview = overview

    def tick(self, policy: Policy, now: datetime) -> list[str]:
        """The ids of the notices sent; a watch that fails is logged and never stops the timer's
        other work. What reads and reports the clouds' maintenance (the overview's renderer with
        it) is imported once there is something to read: most ticks of most timers have not."""
        settings = policy.maintenance_watch
        if settings is None:
            return []
        from patchpilot.policy.schedule import parse_aws_cron
        from patchpilot.triggers import fired_within

        sent: list[str] = []
        try:
            digest_at = fired_within(settings.digest, policy.zone_for(settings.timezone), now)
            if digest_at is None and fired_within(parse_aws_cron(WATCH_READS), ZoneInfo("UTC"), now) is None:
                return []  # between two hourly reads: no API calls
            from patchpilot.maintenance.watch import alert_notices, digest_notice, watch_view
            from patchpilot.reports.overview import maintenance_summary

            instances = self.discovered(policy, now)
            view = watch_view(self.source().upcoming_maintenance(policy, instances, now), policy, instances, now)
            # The announcer sends each notice once per channel across containers, and gives a
            # failed post up so that the next read tries again; a delivered one is remembered
            # beyond what it is about: the item's end (or due time), or the digest time.
            notices = [
                (notice, max(w.item.ends_at or now, w.due_at or now) + CLAIM_MARGIN)
                for w, notice in zip(view.due, alert_notices(view), strict=True)
            ]
            if digest_at is not None:
                notices.append((digest_notice(view, digest_at), digest_at + CLAIM_MARGIN))
            for notice, until in notices:
                self.announcer().send(notice, policy.notifications, keep_until=until)
                sent.append(notice.id)
            for what, reason in view.unavailable:
                log.warning("policy %s: not read: %s: %s", policy.name, what, reason)
        except Exception:  # a cloud or the claims table unreachable: logged, and the timer goes on
            log.exception("the maintenance watch of policy %s failed", policy.name)
            return sent
        self.overview.keep(lambda: [maintenance_summary(view)])
        return sent
