"""Reads ``alignments<WIDTH>.npz`` (``probe.py``) and asks two questions of a threshold without a k:

1. Is the pool's span alignment bimodal when it holds junk and not otherwise? A two-component
   Gaussian mixture (scikit-learn) against one, by BIC, on log(1 - alignment): the
   difference BIC(1) - BIC(2) (> 0: two components preferred), Ashman's D of the two components and
   the shares of OOD / in-distribution items in the less aligned component.
2. How much of the in-distribution pool does today's pool-referenced cut (median minus k robust
   standard deviations, ``ood_ref=pool``) flag with and without junk?

    .venv/bin/python docs/quality/issue11/screen/kfree/analyse.py   (writes analyse.md and analyse.json)
"""
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.mixture import GaussianMixture

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[4]))
from screen_common import write_summary  # noqa: E402


def mixture(a: np.ndarray) -> dict:
    x = np.log(np.clip(1.0 - a, 1e-9, None)).reshape(-1, 1)  # larger = less aligned
    one = GaussianMixture(1, random_state=0).fit(x)
    two = GaussianMixture(2, random_state=0, n_init=3).fit(x)
    m, s = two.means_.ravel(), np.sqrt(two.covariances_.ravel())
    hi = int(np.argmax(m))
    return {"dbic": float(one.bic(x) - two.bic(x)), "ashman_d": float(abs(m[0] - m[1]) * np.sqrt(2 / (s @ s))),
            "flag": two.predict_proba(x)[:, hi] > 0.5}


def pool_cut(a: np.ndarray, k: float) -> np.ndarray:
    med = np.median(a)
    return a < med - k * 1.4826 * np.median(np.abs(a - med))


def main() -> int:
    rows = []
    for width in (8, 64):
        path = HERE / f"alignments{width}.npz"
        if not path.exists():
            continue
        d = np.load(path)
        for key in sorted({k.split("__")[0] for k in d.files if "__" in k}):
            a, ood = d[f"{key}__pool"].astype(np.float64), d[f"{key}__ood"]
            mix = mixture(a)
            row = {"width": width, "case": key, "junk": bool(ood.any()), "dbic": mix["dbic"], "ashman_d": mix["ashman_d"],
                   "mix_in": float(mix["flag"][~ood].mean()), "mix_ood": float(mix["flag"][ood].mean()) if ood.any() else None}
            for k in (2, 3):
                f = pool_cut(a, k)
                row[f"k{k}_in"], row[f"k{k}_ood"] = float(f[~ood].mean()), float(f[ood].mean()) if ood.any() else None
            rows.append(row)
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
    md = ["| width | case | BIC(1) - BIC(2) | Ashman's D | mixture flags: in / OOD | pool cut k = 2: in / OOD | k = 3: in / OOD |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['width']} | {r['case']} | {r['dbic']:+.0f} | {r['ashman_d']:.2f} | {pct(r['mix_in'])} / {pct(r['mix_ood'])} | "
           f"{pct(r['k2_in'])} / {pct(r['k2_ood'])} | {pct(r['k3_in'])} / {pct(r['k3_ood'])} |" for r in rows]
    summary = []
    for width in (8, 64):
        for junk in (True, False):
            rs = [r for r in rows if r["width"] == width and r["junk"] == junk]
            if rs:
                summary.append(f"- width {width}, {'with' if junk else 'without'} junk ({len(rs)} cycles): two components "
                               f"preferred in {sum(r['dbic'] > 0 for r in rs)}; pool cut flags "
                               f"{pct(min(r['k2_in'] for r in rs))}-{pct(max(r['k2_in'] for r in rs))} (k = 2) and "
                               f"{pct(min(r['k3_in'] for r in rs))}-{pct(max(r['k3_in'] for r in rs))} (k = 3) of the in-distribution pool")
    write_summary(HERE, "analyse", "\n".join(md + [""] + summary) + "\n", {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
