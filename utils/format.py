"""Human-readable numbers for the screen and summaries."""
from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def human_rate(bits_per_s: float) -> str:
    for unit in ("bps", "Kbps", "Mbps", "Gbps"):
        if abs(bits_per_s) < 1000 or unit == "Gbps":
            return f"{bits_per_s:.0f} {unit}" if unit == "bps" else f"{bits_per_s:.1f} {unit}"
        bits_per_s /= 1000
    return f"{bits_per_s:.1f} Gbps"


def human_count(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}G"
