"""Starting points offered when a task is created."""

BLANK = '''"""Describe what this task does in one line."""

# /// script
# dependencies = []
# [tool.taskrun]
# description = ""
# timeout = 600
# concurrency = "forbid"
# ///

print("hello from a new task")
'''

WITH_PARAMS = '''"""A task with parameters and progress reporting."""

# /// script
# dependencies = []
# [tool.taskrun]
# description = "Process a day of data"
# timeout = 600
# concurrency = "forbid"
# [tool.taskrun.params]
# day = { type = "date", default = "today", help = "the partition to process" }
# limit = { type = "int", default = 100, help = "rows to process" }
# ///

import os
import time

day = os.environ["TASKRUN_PARAM_DAY"]
limit = int(os.environ["TASKRUN_PARAM_LIMIT"])
progress = os.environ.get("TASKRUN_PROGRESS_FILE")

for i in range(limit):
    if progress and i % 10 == 0:
        with open(progress, "w") as fh:
            fh.write(f"{i / limit} row {i} of {limit}\\n")
    time.sleep(0.01)
print(f"processed {limit} rows for {day}")
'''

TEMPLATES = {"Blank task": BLANK, "Task with params and progress": WITH_PARAMS}
