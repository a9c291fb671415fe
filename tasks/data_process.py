"""Generate a day of sales as CSV, aggregate it per region and product, print a summary."""

# /// script
# dependencies = []
# [tool.taskrun]
# description = "Generate a day of sales, aggregate it and print a summary"
# timeout = 300
# concurrency = "queue"
# [tool.taskrun.params]
# rows = { type = "int", default = 20000, help = "number of sales to generate" }
# seed = { type = "int", default = 42, help = "random seed, for repeatable data" }
# day = { type = "date", default = "today", help = "the day the sales belong to" }
# ///

import csv
import os
import random
import statistics
from collections import defaultdict
from datetime import date
from pathlib import Path

rows = int(os.environ.get("TASKRUN_PARAM_ROWS", "20000"))
seed = int(os.environ.get("TASKRUN_PARAM_SEED", "42"))
day_param = os.environ.get("TASKRUN_PARAM_DAY", "today")
day = date.today() if day_param == "today" else date.fromisoformat(day_param)
progress = os.environ.get("TASKRUN_PROGRESS_FILE")

rng = random.Random(seed)
regions = ["north", "south", "east", "west"]
products = ["widget", "gadget", "gizmo", "doohickey"]
out = Path.cwd() / f"sales_{day.isoformat()}.csv"

# 1. Extract: write the raw data as CSV (in the run's working directory).
with out.open("w", newline="") as fh:
    writer = csv.writer(fh)
    writer.writerow(["order_id", "region", "product", "quantity", "unit_price"])
    for i in range(rows):
        writer.writerow([i, rng.choice(regions), rng.choice(products), rng.randint(1, 10),
                         round(rng.uniform(1.5, 99.0), 2)])
        if progress and i % 5000 == 0:
            Path(progress).write_text(f"{0.5 * i / rows} generated {i} rows\n")
print(f"wrote {rows} rows to {out.name}")

# 2. Transform: aggregate revenue per region and product.
revenue: dict[tuple[str, str], float] = defaultdict(float)
order_values = []
with out.open(newline="") as fh:
    for rec in csv.DictReader(fh):
        value = int(rec["quantity"]) * float(rec["unit_price"])
        revenue[(rec["region"], rec["product"])] += value
        order_values.append(value)
if progress:
    Path(progress).write_text("0.9 aggregated\n")

# 3. Load: print the summary.
print(f"\nSales summary for {day.isoformat()}")
print(f"{'region':<8} {'product':<10} {'revenue':>12}")
for (region, product), total in sorted(revenue.items()):
    print(f"{region:<8} {product:<10} {total:>12,.2f}")
print(f"\ntotal revenue {sum(order_values):,.2f}; "
      f"mean order {statistics.mean(order_values):.2f}; "
      f"median order {statistics.median(order_values):.2f}")
