"""A real agent process on a slow device: it serves tasks like ``fl client run``, but each
task starts ``--delay`` seconds late (a slower CPU or link), so devices deliver in an order
set by their delays. Used by the FedBuff arrival-order test:

    python -m tests.fl_core.rounds.slow_agent --delay 2.5 --coordinator URL --ca ca.pem \\
        --enroll-token T --data local.parquet --home DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from fl_core.agent.runner import Agent, AgentConfig
from fl_core.agent.transport import RetryPolicy

logger = logging.getLogger("slow_agent")


class SlowAgent(Agent):
    """An :class:`Agent` whose every task starts ``delay_s`` late."""

    def __init__(self, config: AgentConfig, *, delay_s: float) -> None:
        super().__init__(config)
        self.delay_s = delay_s

    def handle(self, task: dict[str, Any]) -> None:
        logger.info("task %s round %s: starting in %.1f s", task["campaign"], task["round"],
                    self.delay_s)  # fmt: skip
        self.stop.wait(self.delay_s)
        super().handle(task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--enroll-token", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--home", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )  # fmt: skip
    agent = SlowAgent(
        AgentConfig(
            coordinator=args.coordinator, ca=args.ca, data=args.data, home=args.home,
            enroll_token=args.enroll_token, holdout=0.0, wait_s=1.0, heartbeat_s=1.0,
            retry=RetryPolicy(attempts=6, base_s=0.05, cap_s=0.5),
        ),
        delay_s=args.delay,
    )  # fmt: skip
    try:
        agent.run()
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
