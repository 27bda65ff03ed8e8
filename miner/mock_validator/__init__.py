"""A local stand-in for a Vidaio validator: synthetic rounds over real HTTP, real signatures, real scoring.

Kept apart from the miner: it shares only the wire models (``miner.protocol``) and client-side request
signing (``miner.auth``) with it. Entry point: ``flashvsr-mock-validator`` (``__main__.main``).
"""
