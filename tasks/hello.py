"""Say hello: the smallest task, showing params, progress and the run's environment."""

# /// script
# dependencies = []
# [tool.taskrun]
# description = "Greet someone, step by step, reporting progress"
# timeout = 60
# concurrency = "forbid"
# [tool.taskrun.params]
# name = { type = "str", default = "world", help = "who to greet" }
# steps = { type = "int", default = 3, help = "how many greetings" }
# delay = { type = "float", default = 0.2, help = "seconds between greetings" }
# ///

import os
import time


def report(fraction: float, message: str) -> None:
    """Tell the service how far along we are (shown as a progress bar)."""
    path = os.environ.get("TASKRUN_PROGRESS_FILE")
    if path:
        with open(path, "w") as fh:
            fh.write(f"{fraction} {message}\n")


name = os.environ.get("TASKRUN_PARAM_NAME", "world")
steps = int(os.environ.get("TASKRUN_PARAM_STEPS", "3"))
delay = float(os.environ.get("TASKRUN_PARAM_DELAY", "0.2"))

print(f"run {os.environ.get('TASKRUN_RUN_ID')} of task {os.environ.get('TASKRUN_TASK')}")
for i in range(1, steps + 1):
    print(f"Hello, {name}! ({i}/{steps})")
    report(i / steps, f"greeting {i} of {steps}")
    time.sleep(delay)
print("done")
