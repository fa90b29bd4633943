"""FCN's score_fr (4096 -> few classes) under CPU bf16 autocast must not abort the process.

torch 2.14.1's bf16 1x1-conv backward from 4096 to < 16 channels corrupts the heap on
AVX512-BF16/AMX CPUs (segbench.models.fcn.score_in_fp32_on_cpu). The check runs in a
subprocess: a regression is a failed test, not a crashed test session.
"""
import subprocess
import sys

import torch
from torch import nn

from segbench.models.fcn import score_in_fp32_on_cpu

SCRIPT = """
import torch
from torch import nn
from segbench.models.fcn import score_in_fp32_on_cpu
for classes in range(1, 16):
    for size in (3, 5, 7):
        conv = nn.Conv2d(4096, classes, 1)
        h = torch.randn(2, 4096, size, size, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            score = score_in_fp32_on_cpu(conv, h)
        score.float().sum().backward()
print("survived")
"""


def test_score_layer_runs_fp32_where_the_bf16_kernel_breaks():
    conv, h = nn.Conv2d(4096, 11, 1), torch.randn(1, 4096, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert score_in_fp32_on_cpu(conv, h).dtype == torch.float32
        assert score_in_fp32_on_cpu(nn.Conv2d(4096, 21, 1), h).dtype == torch.bfloat16  # VOC: bf16 as usual
    assert score_in_fp32_on_cpu(conv, h).dtype == torch.float32  # no autocast: untouched


def test_bf16_training_of_a_small_class_score_layer_does_not_abort():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr[-2000:]
