"""Training speed: the service against the d2l data path (the peer) and a bare in-memory loop.

Every variant trains the same MLP with the same recipe (SGD, lr 0.1, batch 256) for the same epochs, in
the same run, so the ratios hold on a shared, noisy machine. The service is measured from the HTTP
submit to the job's `succeeded` (a warm worker, data set already loaded); "train s" is the training
time the job recorded (its epochs' seconds).

    .venv/bin/python -m bench.training [--device cpu|cuda] [--epochs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.common import client_for, markdown_table, run_variant, service, wait_for

SPECS = [[256], [1024], [1024, 512]]
SAMPLES = 60_000


def service_runs(device: str, epochs: int, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with service(device, extra_env=env) as running, client_for(running) as client:
        for hidden in SPECS:
            started = time.perf_counter()
            job_id = client.post("/v1/jobs", json={"hidden_layers": hidden, "epochs": epochs, "seed": 0}).json()["id"]
            job = wait_for(running, client, job_id)
            seconds = time.perf_counter() - started
            if job["status"] != "succeeded":
                raise RuntimeError(f"service job failed: {job}")
            epochs_rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
            results[str(hidden)] = {
                "seconds": seconds,
                "train_seconds": sum(row["seconds"] for row in epochs_rows),
                "test_acc": epochs_rows[-1]["test_acc"],
                "peak_mib": running.worker_peak_rss_mib() if device == "cpu" else None,
                "cuda_graphs": job["provenance"]["cuda_graphs"],
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    common = ["--epochs", str(args.epochs), "--device", args.device]

    results: dict[str, dict[str, dict[str, Any]]] = {"peer (d2l DataLoader)": {}, "bare in-memory loop": {}}
    for hidden in SPECS:
        flags = ["--hidden", *map(str, hidden)]
        results["peer (d2l DataLoader)"][str(hidden)] = run_variant("bench.peer_d2l", flags + common)
        results["bare in-memory loop"][str(hidden)] = run_variant("bench.bare_loop", flags + common)
    if args.device.startswith("cuda"):
        results["service, eager"] = service_runs(args.device, args.epochs, {"FMNIST_CUDA_GRAPHS": "0"})
        results["service, CUDA graphs"] = service_runs(args.device, args.epochs)
    else:
        results["service"] = service_runs(args.device, args.epochs)

    rows = []
    for hidden in SPECS:
        key = str(hidden)
        peer = results["peer (d2l DataLoader)"][key]["seconds"]
        bare = results["bare in-memory loop"][key]["seconds"]
        for variant, by_spec in results.items():
            r = by_spec[key]
            rows.append(
                [
                    key,
                    variant,
                    f"{r['seconds']:.2f}",
                    f"{r['train_seconds']:.2f}" if "train_seconds" in r else "",
                    f"{SAMPLES * args.epochs / r['seconds']:,.0f}",
                    f"{r['test_acc']:.4f}",
                    f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "n/a",
                    f"{peer / r['seconds']:.1f}x",
                    f"{r['seconds'] / bare:.2f}",
                ]
            )
    headers = ["hidden", "variant", "seconds", "train s", "samples/s", "test acc", "peak MiB", "vs peer", "/ bare"]
    print(f"{args.epochs} epochs on {args.device}; 'vs peer' = peer seconds / seconds; '/ bare' = seconds / bare loop")
    print(markdown_table(headers, rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": args.device, "epochs": args.epochs, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
