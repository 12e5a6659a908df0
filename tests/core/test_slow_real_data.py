"""Real-data checks (``pytest -m slow``): the shipped checkpoints reproduce the published
results on the full Fashion-MNIST test set, and the README's main job runs end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "fashion_mnist_cgnet.json"
# the session whose table holds each shipped block checkpoint's row
STRUCTURED_S31 = ROOT / "results" / "fashion_mnist_structured_s31.json"
STRUCTURED_S33 = ROOT / "results" / "fashion_mnist_structured_s33.json"

pytestmark = pytest.mark.slow


def _eval(ckpt: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "dyngate", "eval", str(ckpt), "--json"],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out)


def test_shipped_checkpoints_reproduce_published_table():
    rows = json.loads(RESULTS.read_text())
    dense_row = rows[0]
    gated_res = _eval(ROOT / "checkpoints" / "resnet20_fmnist_cgnet.pt")
    dense_res = _eval(ROOT / "checkpoints" / "resnet20_fmnist_dense.pt")
    assert dense_res["accuracy"] == pytest.approx(dense_row["accuracy"], abs=3e-4)
    shipped = [r for r in rows[1:] if r["accuracy"] == pytest.approx(gated_res["accuracy"], abs=3e-4)
               and r["gated_mac_reduction"] == pytest.approx(gated_res["gated_mac_reduction"], rel=1e-4)]
    assert shipped, f"shipped gated checkpoint {gated_res['accuracy']} matches no row of {RESULTS}"
    assert gated_res["gated_mac_reduction"] > 1.5


@pytest.mark.parametrize("ckpt,table,label", [
    ("resnet20_fmnist_tile7.pt", STRUCTURED_S33,
     "pre-act, tile 7x7 x 16 ch, rule all, 15 ep at T=0.1 + 10 + 15 ep at T=0.13 + 6 ep without augmentation"),
    ("resnet20_postact_fmnist_tile7.pt", STRUCTURED_S31,
     "shipped: post-act, tile 7x7 x 16 ch, rule all, T=0.1, 6 ep")])
def test_shipped_block_checkpoints_reproduce_published_table(ckpt, table, label):
    rows = {r["label"]: r for r in json.loads(table.read_text())["runs"]}
    res = _eval(ROOT / "checkpoints" / ckpt)
    assert res["accuracy"] == pytest.approx(rows[label]["accuracy"], abs=3e-4)
    assert res["mac_reduction"] == pytest.approx(rows[label]["mac_reduction"], rel=1e-3)
    assert all(l["tile"] == [7, 7] for l in res["layers"] if l["gated"])


def test_main_job_profile_feeds_accel_sim(tmp_path):
    """The README's main job: the block-gated checkpoint's profile, tile densities included."""
    prof = tmp_path / "p.yaml"
    subprocess.run([sys.executable, "-m", "dyngate", "eval", "checkpoints/resnet20_fmnist_tile7.pt",
                    "--limit", "2000", "--profile-out", str(prof)], check=True, cwd=ROOT,
                   capture_output=True)
    out = subprocess.run([sys.executable, "-m", "accel_sim", "run", "resnet20", "--input", "1x28x28",
                          "--profile", str(prof), "--json"], check=True, capture_output=True,
                         text=True, cwd=ROOT).stdout
    res = json.loads(out)
    assert res["theoretical_speedup"] > 1.0 and res["gated_cycles"] <= res["dense_cycles"]
    assert len(res["layers"]) == 20
