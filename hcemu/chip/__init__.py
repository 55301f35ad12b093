"""The functional hard-coded chip: ROM banks, CIM units, SRAM KV cache, vector unit, event counters."""
from hcemu.chip.chip import Chip, ChipBusyError, SramBudgetError, StepResult
from hcemu.chip.lora import SramAdapter

__all__ = ["Chip", "ChipBusyError", "StepResult", "SramAdapter", "SramBudgetError"]
