"""The functional hard-coded chip: ROM banks, CIM units, SRAM KV cache, vector unit, event counters."""
from hcemu.chip.chip import Chip, ChipBusyError, StepResult

__all__ = ["Chip", "ChipBusyError", "StepResult"]
