"""A spending cap for one run: requests, tokens and cost, reserved before each request is sent.

Reservations use the worst case of a request (estimated prompt tokens + ``max_tokens``) and are
settled with the real usage when the reply arrives, so concurrent requests can never push the
run past a cap. Once a cap is hit the budget stays closed: nothing new is sent, work already
done is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.synthesize.llm.config import BudgetConfig


class BudgetExhausted(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Budget:
    config: BudgetConfig
    used: Usage = field(default_factory=Usage)
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    stop_reason: str | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        c = self.config
        return (prompt_tokens * c.price_input_per_mtok + completion_tokens * c.price_output_per_mtok) / 1e6

    def reserve(self, est_prompt_tokens: int, max_completion_tokens: int) -> tuple[int, float]:
        """Admit one request or raise BudgetExhausted; returns the reservation to settle."""
        if self.stop_reason:
            raise BudgetExhausted(self.stop_reason)
        c = self.config
        tokens = est_prompt_tokens + max_completion_tokens
        cost = self.cost(est_prompt_tokens, max_completion_tokens)
        if c.max_requests is not None and self.used.requests + 1 > c.max_requests:
            self.stop_reason = "max_requests"
        elif (
            c.max_tokens is not None and self.used.total_tokens + self.reserved_tokens + tokens > c.max_tokens
        ):
            self.stop_reason = "max_tokens"
        elif c.max_cost_usd is not None and self.used.cost_usd + self.reserved_cost + cost > c.max_cost_usd:
            self.stop_reason = "max_cost_usd"
        if self.stop_reason:
            raise BudgetExhausted(self.stop_reason)
        self.used.requests += 1
        self.reserved_tokens += tokens
        self.reserved_cost += cost
        return tokens, cost

    def settle(self, reservation: tuple[int, float], prompt_tokens: int, completion_tokens: int) -> None:
        tokens, cost = reservation
        self.reserved_tokens -= tokens
        self.reserved_cost -= cost
        self.used.prompt_tokens += prompt_tokens
        self.used.completion_tokens += completion_tokens
        self.used.cost_usd += self.cost(prompt_tokens, completion_tokens)
