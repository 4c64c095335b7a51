"""What every layer shares: errors, the special token ids and the sacreBLEU/caption
metrics. The bottom layer: it imports nothing else of nmt.
"""

__version__ = "0.1.0"
