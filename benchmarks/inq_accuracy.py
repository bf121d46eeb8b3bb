"""INQ accuracy on built-in data: 5/4/3-bit and ternary vs the fp32 model they start from.

    python -m benchmarks.inq_accuracy [--quick] [--seeds 3]

Models: a digits MLP (LeNet-300-100 on scikit-learn digits) and an MNIST-1D CNN (ConvNet1d, conv2).
Per seed: train the dense model, then run INQ from a copy of it at each bit width (5-bit with the
default 50/75/87.5/100% schedule; 4-bit, 3-bit and ternary with the paper's presets), evaluate the
packed model (Pow2Linear, Pow2Conv1d).
Each INQ run gives two results: the paper's procedure (accuracy right after the last stage) and,
from the same run, after `final_steps` of retraining the biases with every weight frozen.
Reports mean and spread (max - min) over seeds of test accuracy, and the drop from fp32.
"""

import argparse
import copy
import statistics
import time

import torch

from benchmarks.common import markdown_table, write_json
from compressor.data import load_dataset
from compressor.models import build_model
from compressor.quantization import INQConfig, convert_to_pow2, inq_
from compressor.train import TrainConfig, evaluate, fit

MODELS = {  # name -> (dataset, model, dense training steps)
    "digits MLP": ("digits", "lenet", 800),
    "MNIST-1D CNN": ("mnist1d", "conv2", 1200),
}
SCHEDULES = {5: "paper-5bit", 4: "paper-4bit", 3: "paper-3bit", 2: "paper-ternary"}


def inq_config(bits: int, steps: int, final_steps: int, seed: int, lr: float) -> INQConfig:
    # Adam, like the dense training of these small nets; no weight decay.
    return INQConfig.preset(SCHEDULES[bits], steps_per_stage=steps, final_steps=final_steps,
                            optimizer="adam", lr=lr, weight_decay=0.0, seed=seed)


def weights_label(bits: int) -> str:
    return "ternary" if bits == 2 else f"{bits}-bit"


FINAL = " + bias retraining"


def run_seed(label: str, seed: int, stage_steps: int, final_steps: int, dense_scale: float,
             lr: float) -> list[dict]:
    dataset, model_name, dense_steps = MODELS[label]
    data = load_dataset(dataset)
    torch.manual_seed(seed)
    dense = build_model(model_name, feature_shape=data.feature_shape,
                        num_classes=data.num_classes)
    fit(dense, data, TrainConfig(steps=int(dense_steps * dense_scale), seed=seed))
    fp32 = evaluate(dense, data.x_test, data.y_test)
    rows = [{"model": label, "seed": seed, "weights": "fp32", "test_acc": fp32}]
    for bits in SCHEDULES:
        model = copy.deepcopy(dense)
        history = inq_(model, data, inq_config(bits, stage_steps, final_steps, seed, lr),
                       progress=False)
        packed = convert_to_pow2(model, bits)
        acc = evaluate(packed, data.x_test, data.y_test)
        paper = history[-1].get("test_acc_before_final", acc)
        rows.append({"model": label, "seed": seed, "weights": weights_label(bits),
                     "test_acc": paper})
        if final_steps:
            rows.append({"model": label, "seed": seed, "weights": weights_label(bits) + FINAL,
                         "test_acc": acc})
        print(f"{label} seed {seed} {bits}-bit: {paper:.4f} paper, {acc:.4f} with bias "
              f"retraining (fp32 {fp32:.4f})", flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    for label in MODELS:
        fp32 = [r["test_acc"] for r in rows if r["model"] == label and r["weights"] == "fp32"]
        kinds = ["fp32"] + [weights_label(b) + extra for b in SCHEDULES for extra in ("", FINAL)]
        for kind in kinds:
            accs = [r["test_acc"] for r in rows if r["model"] == label and r["weights"] == kind]
            if not accs:
                continue
            drops = [(f - a) * 100 for f, a in zip(fp32, accs, strict=True)]
            table.append({"model": label, "weights": kind,
                          "acc_mean_%": 100 * statistics.mean(accs),
                          "acc_spread_pt": 100 * (max(accs) - min(accs)),
                          "drop_vs_fp32_pt": statistics.mean(drops), "seeds": len(accs)})
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, shorter training")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps-per-stage", type=int, default=600)
    parser.add_argument("--final-steps", type=int, default=400,
                        help="bias retraining after the last stage (0: the paper's procedure only)")
    parser.add_argument("--lr", type=float, default=2e-3, help="INQ retraining rate (Adam)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=sorted(MODELS), help="run one of the two models")
    args = parser.parse_args(argv)
    labels = [args.only] if args.only else list(MODELS)
    torch.set_num_threads(args.threads)
    seeds = 1 if args.quick else args.seeds
    stage_steps = 50 if args.quick else args.steps_per_stage
    final_steps = min(50, args.final_steps) if args.quick else args.final_steps
    start = time.perf_counter()
    rows = [r for label in labels for seed in range(seeds)
            for r in run_seed(label, seed, stage_steps, final_steps, 0.5 if args.quick else 1.0,
                                  args.lr)]
    table = summarise(rows)
    print(markdown_table(table, ["model", "weights", "acc_mean_%", "acc_spread_pt",
                                 "drop_vs_fp32_pt", "seeds"]))
    elapsed = time.perf_counter() - start
    print(f"{elapsed:.0f} s")
    name = "inq_accuracy" + ("" if not args.only else "_" + args.only.split()[-1].lower())
    write_json(name, {"seeds": seeds, "steps_per_stage": stage_steps,
                                "final_steps": final_steps, "lr": args.lr,
                                "threads": args.threads, "runs": rows, "summary": table,
                                "seconds": elapsed})


if __name__ == "__main__":
    main()
