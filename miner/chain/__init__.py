"""The subnet as the miner sees it: the validator registry and endpoint publishing.

- ``ValidatorRegistry`` / ``ValidatorInfo``; ``StaticAllowList`` (``--no-chain``);
  ``MetagraphView`` (chain, background refresh, snapshot file) over a ``ChainReader``.
- ``publish_endpoint`` (bittensor 11 ``ServeAxon``).
"""

from miner.chain.metagraph import ChainReader, MetagraphView, SubtensorReader
from miner.chain.publish import endpoint_address, endpoint_intent, publish_endpoint
from miner.chain.registry import StaticAllowList, ValidatorInfo, ValidatorRegistry

__all__ = ["ChainReader", "MetagraphView", "StaticAllowList", "SubtensorReader", "ValidatorInfo",
           "ValidatorRegistry", "endpoint_address", "endpoint_intent", "publish_endpoint"]
