"""``cryptostream credits``: the ledger and the plan, for people (text) and scripts (JSON)."""

from __future__ import annotations

from typing import Any

from cryptostream.credits.budget import CreditBudget
from cryptostream.credits.ledger import PeriodRecord, iso


def report_json(budget: CreditBudget) -> dict[str, Any]:
    return {
        "plan": budget.plan().to_json(),
        "key": budget.key,
        "ledger": str(budget.ledger.path),
        "periods": {k: v.to_json() for k, v in budget.ledger.periods().items()},
    }


def report_text(budget: CreditBudget) -> str:
    plan = budget.plan()
    lines = [
        f"CoinCap credits, billing period {plan.period_start:%Y-%m-%d} to "
        f"{plan.period_end:%Y-%m-%d} (UTC; resets on day {plan.billing_day})",
        f"  used        {plan.used:,}{_kinds(budget.ledger.current())}",
        "  budget      "
        + (f"{plan.budget:,}" if plan.budget else "no limit")
        + " (coincap.monthly_credits)",
    ]
    if plan.left is not None:
        lines.append(f"  left        {plan.left:,}")
    if plan.source is None:
        why = "no COINCAP_API_KEY" if not budget.key else "not in the source chain"
        lines.append(f"  CoinCap     not used ({why}): nothing is spent")
        return "\n".join(lines)
    if plan.source == "coincap-ws":
        rate = (
            f"{plan.source}: about {plan.stream_credits_per_minute} credit a minute connected, "
            f"plus {plan.credits_per_poll} per REST refresh every {plan.poll_interval:g} s"
        )
    else:
        rate = (
            f"{plan.source} every {plan.poll_interval:g} s, {plan.credits_per_poll} "
            f"credit{'s' if plan.credits_per_poll != 1 else ''} a poll: "
            f"{plan.polls_per_period:,} polls a period"
        )
    lines += [
        f"  rate        {rate}",
        f"  needs       {plan.needed:,} credits for the rest of the period at this rate",
        f"  projected   {plan.projected:,} credits for the whole period",
    ]
    if plan.runs_out is not None:
        lines.append(f"  runs out    {iso(plan.runs_out)} at this rate")
    lines.append(f"  then        {plan.then()} (mode {plan.mode})")
    if plan.exhausted == "coincap":
        lines.append("  now         CoinCap said the allowance is spent: asked again once an hour")
    elif plan.exhausted == "budget":
        lines.append("  now         the budget is spent: CoinCap is not asked until the reset")
    return "\n".join(lines)


def _kinds(rec: PeriodRecord) -> str:
    if not rec.by_kind:
        return ""
    return " (" + ", ".join(f"{k} {v:,}" for k, v in sorted(rec.by_kind.items())) + ")"
