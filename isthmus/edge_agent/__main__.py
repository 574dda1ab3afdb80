"""`isthmus-edge-agent --config agent.toml`: run the edge agent until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isthmus-edge-agent",
                                     description="Isthmus edge agent: runs the head partition on this device.")
    parser.add_argument("--config", required=True, help="Path to the agent's TOML config.")
    parser.add_argument("--listen", help="Override `listen` (host:port of the local HTTP endpoint).")
    parser.add_argument("--uplink-mbps", type=float, help="Override `uplink_mbps` (0 = unlimited).")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from isthmus.edge_agent.agent import EdgeAgent
    from isthmus.edge_agent.config import ConfigError, load_config

    try:
        config = load_config(args.config, listen=args.listen, uplink_mbps=args.uplink_mbps)
    except ConfigError as err:
        print(f"isthmus-edge-agent: {err}", file=sys.stderr)
        return 2
    agent = EdgeAgent(config)
    try:
        agent.start()
    except OSError as err:
        print(f"isthmus-edge-agent: cannot listen on {config.listen}: {err.strerror}. "
              "To fix: pick a free port in `listen`.", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    try:
        agent.wait()
    except KeyboardInterrupt:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
