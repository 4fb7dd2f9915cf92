"""deita: data-efficient alignment. Select a budget of instruction data, then SFT and DPO with TRL."""

__version__ = "0.1.0"
