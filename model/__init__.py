"""NUWA-Infinity's network: directions, nearby context pool, rendering blocks, renderers, VQGAN.

Nothing in this package reads or writes files, knows about stages, or imports DeepSpeed.
"""
