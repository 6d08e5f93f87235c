"""Agent payloads (catalog §5): task dispatched/completed, circuit breaker, checkpoint reached."""

from __future__ import annotations

from pydantic import Field, JsonValue

from events.enums import AgentPattern, AgentTaskResult, CheckpointType, CircuitBreakerState
from events.payloads.base import Payload
from events.primitives import Count, Lax, NonEmptyText, OpaqueId, Uuid


class AgentTaskDispatched(Payload):
    """agent.task_dispatched (§5.1)."""

    taskId: Uuid
    workOrderId: Uuid
    agentNode: OpaqueId
    # A string, not an enum: model tiers change faster than event schemas (see ModelTier).
    modelAssignment: NonEmptyText = Field(description='"haiku" | "sonnet" | "opus"')
    tokenBudget: Count
    pattern: Lax[AgentPattern]


class AgentTaskCompleted(Payload):
    """agent.task_completed (§5.2)."""

    taskId: Uuid
    workOrderId: Uuid
    agentNode: OpaqueId
    tokensConsumed: Count
    durationMs: Count
    result: Lax[AgentTaskResult]
    outputSummary: str


class CircuitBreakerStateChanged(Payload):
    """agent.circuit_breaker_state_changed (§5.3)."""

    agentNode: OpaqueId
    previousState: Lax[CircuitBreakerState]
    newState: Lax[CircuitBreakerState]
    failureCount: Count
    lastFailureReason: str


class AgentCheckpointReached(Payload):
    """agent.checkpoint_reached (§5.4)."""

    taskId: Uuid
    workOrderId: Uuid
    checkpointType: Lax[CheckpointType]
    description: NonEmptyText
    requiresHumanApproval: bool
    context: dict[str, JsonValue]
