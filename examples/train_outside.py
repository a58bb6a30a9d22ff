"""Models trained outside nightshift, as a data scientist would in a notebook, saved as the files they bring.

    uv run python examples/train_outside.py --data data --until 2026-12-02 --out .nightshift/brought

trains, on the labelled demo days up to --until:

* `spend.txt`: a LightGBM regressor of next month's spend (label `spend_next_month`), LightGBM's own
  text format;
* `plan.json`: an XGBoost classifier of next month's plan (label `next_plan`, 4 classes), XGBoost's
  own JSON format, with the class names in its metadata.

Nothing here imports nightshift: `nightshift models register -m spend --from <out>/spend.txt --ds D`
(and `-m plan --from <out>/plan.json`) converts each to ONNX, proves it equal to LightGBM/XGBoost on
real rows of day D, and registers it.
"""

from __future__ import annotations

import argparse
import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: The features both models read (numeric columns of the demo data; nulls stay NaN, which both
#: libraries route natively).
FEATURES = [
    "tenure_months",
    "monthly_charges",
    "discount_pct",
    "num_products",
    "num_devices",
    "household_size",
    "estimated_income_k",
    "support_calls_30d",
    "satisfaction_score",
    "data_usage_gb_30d",
    "overage_charges_30d",
    "voice_minutes_30d",
]
PLANS = ["basic", "standard", "premium", "family"]


def labelled_days(data: Path, until: date, days: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    xs, ys = [], {"spend_next_month": [], "next_plan": []}
    for back in range(days):
        ds = (until - timedelta(days=back)).isoformat()
        feats = data / "features" / "churn" / f"ds={ds}"
        labels = data / "labels" / "churn" / f"ds={ds}"
        if not (feats / "_SUCCESS").exists() or not (labels / "_SUCCESS").exists():
            continue
        f = pq.read_table(feats, columns=["customer_id", *FEATURES])
        lab = pq.read_table(labels)
        lab = lab.take(pc.index_in(f.column("customer_id"), lab.column("customer_id")))
        xs.append(np.column_stack([f.column(n).to_numpy(zero_copy_only=False).astype(float) for n in FEATURES]))
        for name in ys:
            ys[name].append(lab.column(name).to_numpy(zero_copy_only=False))
    if not xs:
        raise SystemExit(f"no labelled day up to {until} under {data}: run `make demo` (or nightshift demo-data) first")
    return np.vstack(xs), {k: np.concatenate(v) for k, v in ys.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"), help="the demo data folder (features/, labels/)")
    parser.add_argument("--until", type=date.fromisoformat, required=True, help="newest labelled day to train on")
    parser.add_argument("--days", type=int, default=3, help="labelled days to train on")
    parser.add_argument("--out", type=Path, default=Path(".nightshift/brought"), help="where to write the models")
    args = parser.parse_args()

    import lightgbm as lgb
    import xgboost as xgb

    x, y = labelled_days(args.data, args.until, args.days)
    args.out.mkdir(parents=True, exist_ok=True)

    spend = lgb.LGBMRegressor(n_estimators=100, num_leaves=31, learning_rate=0.08, verbose=-1, random_state=7)
    spend.fit(x, y["spend_next_month"].astype(float), feature_name=FEATURES)
    spend.booster_.save_model(str(args.out / "spend.txt"))

    index = {name: i for i, name in enumerate(PLANS)}
    plan = xgb.XGBClassifier(n_estimators=100, max_depth=5, learning_rate=0.1, random_state=7)
    plan.fit(x, np.array([index[v] for v in y["next_plan"]]))
    booster = plan.get_booster()
    booster.feature_names = FEATURES
    booster.set_attr(classes=json.dumps(PLANS))  # the class names, for whoever loads the file
    plan.save_model(str(args.out / "plan.json"))
    spend, plan_file = args.out / "spend.txt", args.out / "plan.json"
    print(f"trained on {len(x):,} labelled rows: {spend} (LightGBM), {plan_file} (XGBoost)")


if __name__ == "__main__":
    main()
