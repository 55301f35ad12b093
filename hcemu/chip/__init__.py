"""The functional hard-coded chip: ROM banks, CIM units, SRAM KV cache, vector unit, event counters."""
from hcemu.chip.chip import Chip, StepResult

__all__ = ["Chip", "StepResult"]
