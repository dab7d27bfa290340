"""Plot layout_probe.json (docs/bench/gpu/layout_probe.py): images/s against batch size for each
memory layout and cuDNN autotuning, training steps and inference side by side.

    python docs/bench/gpu/plot.py docs/bench/gpu/h200/layout_probe.json docs/bench/gpu/h200/layout.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    res = json.load(open(src))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "train_images_per_s", "training step (fwd + bwd + SGD)"),
                           (axes[1], "infer_images_per_s", "inference (eval forward)")):
        for layout, style in (("channels_last", "-"), ("nchw", "--")):
            for bench, marker in ((False, "o"), (True, "s")):
                rows = sorted((r for r in res["throughput"] if r["layout"] == layout and r["cudnn_benchmark"] == bench),
                              key=lambda r: r["batch"])
                ax.plot([r["batch"] for r in rows], [r[key] / 1000 for r in rows], style, marker=marker,
                        label=f"{layout}{', cudnn.benchmark' if bench else ''}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (engine: train 64, quality bench 32; eval 512)")
        ax.set_ylabel("thousand images / s")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"ResNet-18 width 64, 32 px RGB, bf16 autocast on {res.get('gpu') or res['device']} (torch {res['torch']})")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
