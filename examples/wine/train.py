"""Train a classifier on the UCI Wine data, inside an Animus sandbox.

Reads the data file mounted at /inputs/wine (the CSV that scikit-learn ships:
a header line `n_samples,n_features,class names...`, then rows of 13 features
and the class), trains with a fixed seed, and writes:

- /outputs/model.pkl     the fitted pipeline (pickle protocol 5)
- /outputs/metrics.json  accuracy and macro F1 on a held-out split

Parameters come from ANIMUS_PARAMS (JSON): seed, test_size, n_estimators.
Runs outside the platform too: `python train.py DATA OUTPUT_DIR`.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        n_samples, n_features = int(header[0]), int(header[1])
        rows = [[float(value) for value in row] for row in reader if row]
    data = np.asarray(rows)
    if data.shape != (n_samples, n_features + 1):
        raise SystemExit(f"unexpected data shape {data.shape}")
    return data[:, :-1], data[:, -1].astype(int)


def main() -> None:
    data_path = Path(sys.argv[1] if len(sys.argv) > 1 else "/inputs/wine")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "/outputs")
    params = json.loads(os.environ.get("ANIMUS_PARAMS", "{}"))
    seed = int(params.get("seed", 42))

    features, target = load(data_path)
    x_train, x_test, y_train, y_test = train_test_split(
        features,
        target,
        test_size=float(params.get("test_size", 0.25)),
        random_state=seed,
        stratify=target,
    )
    model = make_pipeline(
        StandardScaler(),
        RandomForestClassifier(
            n_estimators=int(params.get("n_estimators", 200)),
            random_state=seed,
            n_jobs=1,
        ),
    )
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)

    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pkl").write_bytes(pickle.dumps(model, protocol=5))
    (out / "metrics.json").write_text(json.dumps(metrics, sort_keys=True))
    print(f"trained on {len(x_train)} rows, tested on {len(x_test)}: {metrics}")


if __name__ == "__main__":
    main()
