"""Training losses, one per module, each with the same docstring layout."""

from components.losses.listwise_ce import ListwiseCELoss, listwise_ce

__all__ = ["ListwiseCELoss", "listwise_ce"]
