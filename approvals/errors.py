"""The refusals of Flow B's services: each a DomainError whose code and HTTP status are what the
API answers, and whose message the admin shows."""

from __future__ import annotations

from orchestrator.infra.errors import Conflict, DomainError


class ProposalInvalid(DomainError, ValueError):
    """Quorum out of range, no approvers, the proposer among the approvers, a bad allocation."""

    code = "invalid_proposal"
    http_status = 422


class OwnProposal(ProposalInvalid):
    """The proposer tried to decide on their own proposal."""

    code = "own_proposal"
    http_status = 403


class NotAnApprover(DomainError, PermissionError):
    """The user is not a designated approver of this proposal."""

    code = "not_an_approver"
    http_status = 403


class AlreadyDecided(Conflict):
    """This approver has decided on this proposal before."""

    code = "already_decided"


class ProposalClosed(Conflict):
    """The proposal is no longer pending (approved, rejected, expired, ...)."""

    code = "proposal_closed"


class ProposalNotApproved(ProposalClosed):
    """Only an approved proposal executes."""

    code = "not_approved"
