#!/usr/bin/env python3
"""Writes the demo banner images (SVG, no external fonts or assets): b01.svg … b10.svg."""
import pathlib

OFFERS = [
    ("Winter Edit", "Flat 40% off jackets", "#1f3a5f", "#f2c14e"),
    ("Ethnic Week", "Kurtas from ₹499", "#7b2d26", "#f6e7cb"),
    ("Sneaker Drop", "New arrivals daily", "#0b6e4f", "#e0f2e9"),
    ("Denim Days", "Buy 2, get 1 free", "#283593", "#e8eaf6"),
    ("Festive Gold", "Jewellery up to 60% off", "#8d6e00", "#fff8e1"),
    ("Kids Corner", "Everything under ₹799", "#c2185b", "#fce4ec"),
    ("Sportswear", "Extra 20% with code RUN20", "#00695c", "#e0f2f1"),
    ("Home Refresh", "Linen and décor sale", "#5d4037", "#efebe9"),
    ("Beauty Bar", "Free lipstick over ₹1,499", "#6a1b9a", "#f3e5f5"),
    ("Clearance", "Last sizes, lowest prices", "#b71c1c", "#ffebee"),
]

TEMPLATE = """<svg xmlns="http://www.w3.org/2000/svg" width="728" height="200" viewBox="0 0 728 200" role="img" aria-label="{title}: {offer}">
  <rect width="728" height="200" fill="{bg}"/>
  <circle cx="640" cy="100" r="140" fill="{fg}" opacity="0.18"/>
  <text x="40" y="92" font-family="sans-serif" font-size="46" font-weight="700" fill="{fg}">{title}</text>
  <text x="40" y="140" font-family="sans-serif" font-size="26" fill="{fg}">{offer}</text>
  <text x="688" y="180" font-family="monospace" font-size="18" text-anchor="end" fill="{fg}" opacity="0.7">{banner}</text>
</svg>
"""

out = pathlib.Path(__file__).resolve().parent
for i, (title, offer, bg, fg) in enumerate(OFFERS, start=1):
    banner = f"b{i:02d}"
    (out / f"{banner}.svg").write_text(
        TEMPLATE.format(title=title, offer=offer, bg=bg, fg=fg, banner=banner), encoding="utf-8"
    )
