"""Zeroth-order estimators, optimizers and schedules."""

from edgetune.zo.schedules import Schedule
from edgetune.zo.zosgd import ZOSGD, StepRecord

__all__ = ["ZOSGD", "Schedule", "StepRecord"]
