"""The assets the platform lists, in the order of the portfolio's columns."""

from typing import Final

ASSETS: Final = ("BTC", "ETH", "USDT", "USDC", "XRP", "ADA")
STABLECOINS: Final = frozenset({"USDT", "USDC"})


def check_asset(asset: str) -> str:
    """The asset's canonical name; ValueError naming the choices for anything else."""
    name = asset.strip().upper()
    if name not in ASSETS:
        raise ValueError(f"unknown asset {asset!r}; expected one of {', '.join(ASSETS)}")
    return name
