"""scaledyn: scaling studies of LM training dynamics (loss deceleration, zero-sum learning)."""

__version__ = "0.1.0"
