"""DDP (gloo, 2 processes) keeps the bank identical on every rank and equals one process on the global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_steps import run_steps

from trainer.distributed import Dist

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("objective", ["nce", "softmax"])
def test_two_gloo_ranks_equal_one_process(tmp_path, objective):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(29500 + os.getpid() % 1000), str(TESTS / "ddp_steps.py"), str(out),
                    objective], check=True, env=env, timeout=240, capture_output=True)
    rank0, rank1 = (torch.load(f"{out}.rank{r}") for r in (0, 1))
    single = run_steps(Dist(), objective)

    assert torch.equal(rank0["bank"], rank1["bank"])  # identical on every rank
    assert rank0["losses"] == pytest.approx(single["losses"], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(rank0["bank"], single["bank"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rank0["head"], single["head"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rank0["z"], single["z"], rtol=1e-5, atol=0)
    assert not torch.allclose(single["bank"], run_steps(Dist(), objective, steps=0)["bank"])  # steps did move it
