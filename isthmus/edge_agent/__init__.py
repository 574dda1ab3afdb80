"""The Isthmus edge agent (no Ray): runs the head partition on the device, streams to the cloud.

Install on a device: see README "Edge agent"; console script `isthmus-edge-agent --config agent.toml`.
"""

from isthmus.edge_agent.agent import AgentError, EdgeAgent, TokenBucket, backoff_delay_s
from isthmus.edge_agent.config import AgentConfig, ConfigError, load_config, parse_config, write_config

__all__ = ["AgentConfig", "AgentError", "ConfigError", "EdgeAgent", "TokenBucket", "backoff_delay_s",
           "load_config", "parse_config", "write_config"]
