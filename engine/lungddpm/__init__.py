"""lungddpm: semantic-layout-guided thoracic CT synthesis (Lung-DDPM / Lung-DDPM+)."""

__version__ = "0.1.0"
