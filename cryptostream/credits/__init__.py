"""CoinCap credits: the ledger of what was spent, the budget, the plan and pacing."""

from cryptostream.credits.budget import CreditBudget, Plan
from cryptostream.credits.ledger import Ledger, credits_for, period_bounds

__all__ = ["CreditBudget", "Ledger", "Plan", "credits_for", "period_bounds"]
