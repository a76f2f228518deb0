"""The CoinCap budget: the plan for the billing period, pacing, and when to stop asking.

Every CoinCap request of a process goes through one :class:`CreditBudget`:

* :meth:`CreditBudget.refusal` before it: a reason not to send it — the budget
  (``coincap.monthly_credits``) would be overspent, or CoinCap itself said the
  allowance is spent and the hourly probe is not due;
* :meth:`CreditBudget.charged` after it: the answer's credits go into the ledger;
* :meth:`CreditBudget.poll_due` on every poll slot of the ``coincap`` source: in
  ``pace`` mode a slot is skipped unless what is left, spread over the rest of the
  period, allows a poll now.

What happens when the configured rate would overspend is ``coincap.budget_mode``:
``pace`` (stretch the polls so the budget lasts to the reset), ``failover`` (poll at
the configured rate; when the budget is spent the failover chain hands over to the
next source at once, and CoinCap takes over again at the reset), or ``auto``:
``failover`` when a source follows CoinCap in the chain, else ``pace``.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from cryptostream import clocks
from cryptostream.chain import KEYED_SOURCES
from cryptostream.config import Config
from cryptostream.credits.ledger import Clock, Ledger, billed, credits_for, iso
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics

log = get_logger(__name__)

#: While CoinCap says the allowance is spent, it is asked again at most this often.
PROBE_EVERY = 3600.0
#: Size estimates for a plan before CoinCap has answered (its JSON, compact).
ASSET_RECORD_BYTES = 450
HISTORY_ROW_BYTES = 100
ENVELOPE_BYTES = 40
#: The price stream's rate (documented as about one credit per minute connected).
STREAM_CREDITS_PER_MINUTE = 1

Mode = Literal["unlimited", "pace", "failover"]
Exhausted = Literal["budget", "coincap"]


def poll_credits_estimate(assets: int) -> int:
    """Credits of one ``/assets?ids=...`` answer for this many assets, before any was seen."""
    return credits_for(ENVELOPE_BYTES + ASSET_RECORD_BYTES * assets)


def history_credits_estimate(rows: int) -> int:
    """Credits of one history answer with this many rows."""
    return credits_for(ENVELOPE_BYTES + HISTORY_ROW_BYTES * rows)


@dataclass(frozen=True, slots=True)
class Plan:
    """The billing period at the configured rate (see :meth:`CreditBudget.plan`)."""

    #: ``coincap`` or ``coincap-ws`` (the first CoinCap source of the chain), or None.
    source: str | None
    period_start: dt.datetime
    period_end: dt.datetime
    billing_day: int
    #: ``coincap.monthly_credits``; 0 = no limit.
    budget: int
    used: int
    #: budget - used (never below 0); None without a limit.
    left: int | None
    mode: Mode
    #: Credits of one poll (for ``coincap-ws``: of one REST refresh).
    credits_per_poll: int
    #: The configured seconds between polls (``coincap-ws``: between refreshes).
    poll_interval: float
    #: Polls in a whole period at that interval.
    polls_per_period: int
    #: Credits the configured rate needs from now to the end of the period.
    needed: int
    #: What the period will have cost at its end, as things stand.
    projected: int
    lasts: bool
    #: When the budget runs out at the configured rate (None if it lasts).
    runs_out: dt.datetime | None
    #: ``pace`` mode when the rate would overspend: seconds between polls that make
    #: what is left last to the reset.
    paced_interval: float | None
    #: Who takes over in ``failover`` mode.
    fallbacks: tuple[str, ...]
    #: Why CoinCap is not asked now: our budget is spent, or CoinCap said so.
    exhausted: Exhausted | None
    stream_credits_per_minute: int

    def then(self) -> str:
        """What happens when the configured rate would overspend, in a few words."""
        if self.source is None:
            return "CoinCap is not used"
        if self.lasts:
            return "the budget lasts the period at the configured rate"
        if self.mode == "failover":
            return f"hand over to {', '.join(self.fallbacks)} when it is spent, back at the reset"
        if self.paced_interval is not None:
            return f"polls paced to one every {_duration(self.paced_interval)} so it lasts"
        return "no CoinCap prices until the reset (nothing to fail over to)"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("period_start", "period_end", "runs_out"):
            value = out[key]
            out[key] = iso(value) if value is not None else None
        out["fallbacks"] = list(self.fallbacks)
        out["then"] = self.then()
        return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class CreditBudget:
    """One per process: the ledger, the budget's rules and their metrics.

    ``enforce=False`` (backfill's ``--allow-over-budget``) counts but never refuses for
    the budget's sake; CoinCap's own "spent" answer is always respected.
    """

    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        *,
        clock: Clock | None = None,
        monotonic: Clock | None = None,
        enforce: bool = True,
        flush_every: float | None = None,
    ) -> None:
        cc = config.coincap
        self._config = config
        self._metrics = metrics
        self.enforce = enforce
        self.monthly = cc.monthly_credits
        self.ledger = Ledger(
            config.storage.data_dir,
            cc.billing_day,
            clock=clock,
            fsync=config.storage.fsync,
            flush_every=flush_every,
        )
        chain = config.source_chain() if config.source.name != "demo" else ()
        self.key = bool(cc.api_key)
        first = next((s for s in chain if s in KEYED_SOURCES), None)
        self.source: str | None = first if self.key else None
        after = chain[chain.index(first) + 1 :] if first in chain else ()
        self.fallbacks = tuple(s for s in after if s not in KEYED_SOURCES)
        self.mode: Mode
        if self.monthly == 0:
            self.mode = "unlimited"
        elif cc.budget_mode == "auto":
            self.mode = "failover" if self.fallbacks else "pace"
        else:
            self.mode = cc.budget_mode
        self.exhausted: Exhausted | None = None
        #: The monotonic time of the last poll pace mode let out: spacing never steps.
        self._last_poll: float | None = None
        # A simulated wall clock (tests, the month simulation) is its own monotonic one
        # unless one is given; the real ones share the process's watcher, so that a step
        # is said once, whoever notices it first.
        self._monotonic = monotonic or clock or time.monotonic
        self._steps = clocks.wall if clock is None else clocks.StepWatch(clock, self._monotonic)
        self._pacing: float | None = None
        #: Seconds of the open stream connection not charged yet (less than a minute).
        self._stream_carry = 0.0
        #: Minutes of the open stream connection begun or allowed to begin and not
        #: charged yet: 0 while no connection is open, else the started one, plus the
        #: next once :meth:`next_stream_minute` allowed it (until it begins).
        self._stream_owed = 0
        if metrics is not None:
            metrics.coincap_credits_budget.set(self.monthly)

    @property
    def clock(self) -> Clock:
        """Wall-clock time (Unix seconds) of the ledger, the plan and the pacing."""
        return self.ledger.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        # For tests that run through a billing period without waiting for it.
        self.ledger.clock = clock

    # -- before and after each request -----------------------------------------------

    def refusal(self, kind: str, cost: int | None = None) -> str | None:
        """Why a CoinCap request of ``kind`` must not go out now; None when it may.

        ``cost`` is what the request is expected to be billed (a history request: its
        rows times bytes per row); by default a poll's last cost, else one credit. A request
        whose estimate would take the count over the budget is refused before it is sent.
        """
        rec = self.ledger.current()
        now = self.clock()
        _, end = self.ledger.bounds()
        probe = self.next_probe()
        if probe is not None:
            if now < probe:
                self._set_exhausted("coincap")
                return (
                    f"CoinCap said the allowance is spent; next probe at "
                    f"{iso(_utc(probe))}, new period from {iso(end)}"
                )
            # One request an hour asks whether it still is (a bigger plan, a reset).
            log.info("coincap_allowance_probe", kind=kind)
            self.ledger.mark_spent(probe=True)
            return None
        if cost is None:
            cost = self.poll_credits() if kind in ("poll", "refresh") else 1
        # The open stream's started minute (and the next, once allowed) is owed already.
        used = rec.credits + self._stream_owed * STREAM_CREDITS_PER_MINUTE
        if self.enforce and self.monthly and self.monthly - used < cost:
            self._set_exhausted("budget", used=used, reset=iso(end))
            needs = f"the next request needs about {cost}; " if cost > 1 else ""
            return (
                f"the CoinCap budget is spent: {used} of {self.monthly} credits used "
                f"(coincap.monthly_credits); {needs}CoinCap again from {iso(end)}"
            )
        self._set_exhausted(None)
        return None

    def next_probe(self) -> float | None:
        """While CoinCap's "spent" answer holds this period: when the hourly probe is
        due (Unix seconds; due now when it is past). None without such an answer."""
        rec = self.ledger.current()
        if rec.spent_at is None:
            return None
        return max(rec.spent_at, rec.probed_at or 0.0) + PROBE_EVERY

    def charged(self, kind: str, status: int, nbytes: int) -> int:
        """Count one answer; returns its credits (0 for an answer that is not billed)."""
        if not billed(status):
            return 0
        credits = credits_for(nbytes)
        self.ledger.charge(kind, credits, nbytes=nbytes)
        self._count(kind, credits)
        return credits

    def spent_by_api(self, detail: str) -> None:
        """CoinCap answered that the allowance is spent: no more requests but the hourly
        probe until the period ends."""
        self.ledger.mark_spent()
        _, end = self.ledger.bounds()
        if self.exhausted != "coincap":
            log.warning(
                "coincap_allowance_spent",
                detail=detail,
                next_probe_in_s=PROBE_EVERY,
                period_ends=iso(end),
                hint="raise coincap.monthly_credits only if your plan allows more",
            )
        self._set_exhausted("coincap")

    def answered(self) -> None:
        """A good answer: if CoinCap had said the allowance was spent, it no longer is."""
        if self.exhausted == "coincap" or self.ledger.current().spent_at is not None:
            self.ledger.clear_spent()
            log.info("coincap_allowance_back")
            self._set_exhausted(None)

    def open_stream(self) -> None:
        """A stream connection is being made (after :meth:`refusal` allowed it): its
        first minute is owed from now, so no other request can take its credit."""
        self._stream_owed = 1

    def next_stream_minute(self) -> str | None:
        """Shortly before a minute of the open stream ends: why the next one must not
        begin (the stream is to stop before it does); None when it may, and from now on
        it is owed as well."""
        reason = self.refusal("stream")
        if reason is None:
            self._stream_owed = 2
        return reason

    def charge_stream(self, seconds: float) -> None:
        """Time connected to the price stream: whole minutes are charged as they pass;
        :meth:`end_stream` at the end of a connection charges a started one."""
        self._stream_carry += seconds
        minutes = int(self._stream_carry // 60)
        if minutes:
            self._stream_carry -= minutes * 60
            credits = minutes * STREAM_CREDITS_PER_MINUTE
            self.ledger.charge_stream(minutes * 60.0, credits)
            self._count("stream", credits)
            # The allowed minute has begun: the started one is all that is owed now.
            self._stream_owed = min(self._stream_owed, 1)

    def end_stream(self) -> None:
        """A connection ended (or was never made): its started minute is charged."""
        self._stream_owed = 0
        if self._stream_carry > 0:
            seconds, self._stream_carry = self._stream_carry, 0.0
            self.ledger.charge_stream(seconds, STREAM_CREDITS_PER_MINUTE)
            self._count("stream", STREAM_CREDITS_PER_MINUTE)

    def poll_credits(self) -> int:
        """Credits of one poll: the newest one's, else an estimate from the asset count."""
        seen = self.ledger.current().poll_credits
        return seen or poll_credits_estimate(len(self._config.source.assets))

    # -- pacing ------------------------------------------------------------------------

    def poll_due(self) -> bool:
        """Whether the ``coincap`` source may poll in this slot (pace mode spreads what
        is left over the rest of the period; the other modes always poll)."""
        if self.mode != "pace" or self.source != "coincap":
            return True
        now = self.clock()
        interval = self._interval_for(now)
        if interval is None:
            return True  # spent: refusal() keeps the request from going out
        # Spacing on the monotonic clock: a wall clock that steps back (NTP, a restored
        # VM) never holds polls back until it catches up with its old time.
        mono = self._monotonic()
        self._steps.check(now, mono)
        if self._last_poll is not None and mono - self._last_poll < interval - (
            self._config.source.poll_interval / 2
        ):
            return False
        self._say_pace(interval)
        self._last_poll = mono
        return True

    def _interval_for(self, now: float) -> float | None:
        """Seconds between polls that make what is left last; None when nothing is."""
        cost = self.poll_credits()
        left = self.monthly - self.ledger.current().credits
        if left < cost:
            return None
        _, end = self.ledger.bounds(now)
        polls = left // cost
        return max(self._config.source.poll_interval, (end.timestamp() - now) / polls)

    def _say_pace(self, interval: float) -> None:
        configured = self._config.source.poll_interval
        paced = interval > configured * 1.5
        before = self._pacing
        if paced and (before is None or abs(interval - before) > before * 0.25):
            self._pacing = interval
            log.warning(
                "coincap_paced",
                interval=round(interval, 1),
                configured=configured,
                reason="what is left of coincap.monthly_credits must last to the reset",
            )
        elif not paced and before is not None:
            self._pacing = None
            log.info("coincap_pace_normal", interval=configured)

    # -- the plan ------------------------------------------------------------------------

    def plan(self) -> Plan:
        now = self.clock()
        start, end = self.ledger.bounds(now)
        rec = self.ledger.current()
        used = rec.credits
        left = max(0, self.monthly - used) if self.monthly else None
        cc = self._config.coincap
        ws = self.source == "coincap-ws"
        interval = cc.ws_refresh_interval if ws else self._config.source.poll_interval
        per_poll = self.poll_credits()
        rate = per_poll / interval  # credits a second
        if ws:
            rate += STREAM_CREDITS_PER_MINUTE / 60
        rest = max(0.0, end.timestamp() - now)
        needed = math.ceil(rate * rest) if self.source else 0
        lasts = left is None or needed <= left
        runs_out = None if lasts or left is None else _utc(now + left / rate)
        paced = self._interval_for(now) if self.mode == "pace" and not lasts and not ws else None
        exhausted: Exhausted | None = None
        if rec.spent_at is not None:
            exhausted = "coincap"
        elif left is not None and self.source and left < per_poll:
            exhausted = "budget"
        return Plan(
            source=self.source,
            period_start=start,
            period_end=end,
            billing_day=cc.billing_day,
            budget=self.monthly,
            used=used,
            left=left,
            mode=self.mode,
            credits_per_poll=per_poll,
            poll_interval=interval,
            polls_per_period=int((end - start).total_seconds() // interval),
            needed=needed,
            projected=used + needed if lasts else self.monthly,
            lasts=lasts,
            runs_out=runs_out,
            paced_interval=paced,
            fallbacks=self.fallbacks,
            exhausted=exhausted,
            stream_credits_per_minute=STREAM_CREDITS_PER_MINUTE if ws else 0,
        )

    def log_plan(self) -> Plan:
        """The start-up plan line: info when the budget lasts, warning when it won't."""
        plan = self.plan()
        self.update_metrics(plan)
        if plan.source is None:
            return plan
        (log.info if plan.lasts else log.warning)(
            "coincap_credit_plan",
            source=plan.source,
            credits_per_poll=plan.credits_per_poll,
            poll_interval=plan.poll_interval,
            polls_per_period=plan.polls_per_period,
            needed_for_rest=plan.needed,
            budget=plan.budget or "no limit",
            used=plan.used,
            left=plan.left,
            runs_out=iso(plan.runs_out) if plan.runs_out else None,
            period_ends=iso(plan.period_end),
            mode=plan.mode,
            then=plan.then(),
        )
        return plan

    def status(self) -> dict[str, Any]:
        """What the dashboard's card shows."""
        plan = self.plan()
        out = plan.to_json()
        out["key"] = self.key
        out["lastsUntil"] = iso(plan.runs_out or plan.period_end)
        out["note"] = None
        if not self.key and self._config.source.name != "demo":
            out["note"] = (
                "No CoinCap API key: prices come from the keyless sources. To use CoinCap, "
                "put COINCAP_API_KEY=<your key> in .env (or the environment) and restart."
            )
        return out

    # -- metrics and shutdown ----------------------------------------------------------

    def _count(self, kind: str, credits: int) -> None:
        if self._metrics is not None:
            self._metrics.coincap_credits.labels(kind).inc(credits)
            self.update_metrics()

    def update_metrics(self, plan: Plan | None = None) -> None:
        if self._metrics is None:
            return
        plan = plan or self.plan()
        m = self._metrics
        m.coincap_credits_used.set(plan.used)
        m.coincap_credits_projected.set(plan.projected)
        m.coincap_exhausted.set(1 if plan.exhausted or self.exhausted else 0)

    def _set_exhausted(self, state: Exhausted | None, **info: Any) -> None:
        if state == self.exhausted:
            return
        before, self.exhausted = self.exhausted, state
        if state == "budget":
            log.warning("coincap_budget_spent", budget=self.monthly, mode=self.mode, **info)
        elif state is None and before is not None:
            log.info("coincap_credits_available", after=before)
        self.update_metrics()

    async def start(self) -> None:
        """For the service: the ledger's file I/O off the event loop from now on."""
        await self.ledger.start()

    def close(self) -> None:
        """Write what this process spent (at shutdown; after :meth:`start`, on the
        ledger's thread: :meth:`aclose` waits for it)."""
        self.ledger.flush()

    async def aclose(self, deadline: float) -> None:
        """The service's last flush, by ``deadline`` (the loop's time)."""
        await self.ledger.stop(deadline)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)
